"""JAX's side of device meshes: process counts, a shared seed, and placing batches on a mesh.

Keras' distribution API shards variables on JAX only (see `devices.Capabilities`),
so these helpers are JAX's; `gemma_keras.distribution` and the generation
runner call them without naming JAX themselves.
"""

from __future__ import annotations

import sys

from gemma_keras.errors import DistributionError


def process_count() -> int:
    import jax

    return jax.process_count()


def sync_random_seed() -> None:
    """Gives every process the same Keras seed, as `keras.distribution.initialize` does.

    Each process initializes its own shards of every new variable (LoRA
    factors, for one); with different seeds the "replicated" copies would
    silently differ between processes.
    """
    if process_count() == 1:
        return
    from keras.src.utils import rng_utils

    if rng_utils.get_random_seed() is not None:
        return
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    local = np.asarray(np.random.default_rng().integers(0, 2**31 - 1), dtype=np.int32)
    keras.utils.set_random_seed(int(multihost_utils.broadcast_one_to_all(local)))


def axis_size(mesh, name: str) -> int:
    if name not in mesh.axis_names:
        raise DistributionError(
            f"The device mesh has axes {tuple(mesh.axis_names)}, but gemma_keras needs an axis named "
            f"{name!r}. Build it as DeviceMesh(shape, axis_names=('batch', 'model'), ...)."
        )
    return int(mesh.shape[list(mesh.axis_names).index(name)])


class BatchPlacement:
    """Splits a generation batch over the mesh's batch axis.

    Only used when the model's variables live on the current distribution's
    mesh: arrays on different device sets cannot meet in one computation.
    """

    def __init__(self, dist):
        self.dist = dist
        self.multiple = axis_size(dist.device_mesh, dist.batch_dim_name)

    def put(self, tree):
        import jax

        def place(x):
            return jax.device_put(x, self.dist.get_data_layout(x.shape).backend_layout)

        return jax.tree.map(place, tree)


def batch_placement(variables) -> BatchPlacement | None:
    """The placement for generation inputs of a model with `variables`, or None."""
    keras = sys.modules.get("keras")
    dist = keras.distribution.distribution() if keras is not None else None
    if dist is None or not variables:
        return None
    sharding = getattr(variables[0].value, "sharding", None)
    mesh_devices = set(dist.device_mesh.backend_mesh.devices.flat)
    if sharding is None or set(sharding.device_set) != mesh_devices:
        return None
    if process_count() > 1:
        raise DistributionError(
            "generate does not yet run across several processes (each would need the others' "
            "rows). Generate in one process, or call gemma_keras.distribute(None) and load the "
            "model again to generate on this process's devices."
        )
    return BatchPlacement(dist)
