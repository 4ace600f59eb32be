"""One process of the two-process data-parallel test (see test_multiprocess.py).

    python -m tests.distributed.mp_worker PORT PROCESS_ID GGUF OUT.npz

Each process sees 2 CPU devices, joins the other over loopback with
`jax.distributed.initialize` (CPU collectives over gloo), calls
`gk.distribute()` for data parallelism over all 4 devices, and runs one LoRA
step on its half of the fixed batch. It writes the loss, the LoRA factors as
initialized by Keras and as trained, and whether generate refused to run
across processes, to OUT.npz.
"""

from __future__ import annotations

import sys

import numpy as np


def main(port: int, process_id: int, gguf: str, out: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    import gemma_keras as gk
    from tests.distributed.lora_step import (
        BATCH,
        RANK,
        fix_lora_values,
        fixed_batch,
        lora_variables,
        train_step,
    )

    assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4
    gk.distribute()  # "auto": data parallel over all 4 devices of both processes
    lm = gk.load(gguf)
    lm.backbone.enable_lora(rank=RANK)
    # As Keras initialized them: equal only if distribute() gave both processes one seed.
    keras_init = {v.path: np.asarray(v.value) for v in lora_variables(lm.backbone)}
    fix_lora_values(lora_variables(lm.backbone))  # the single-device reference's start
    x, y, weight = fixed_batch(lm.tokenizer.vocabulary_size)
    half = slice(process_id * BATCH // 2, (process_id + 1) * BATCH // 2)
    local = ({k: v[half] for k, v in x.items()}, y[half], weight[half])
    loss, weights = train_step(lm, *local)
    try:
        lm.generate("hello", max_new_tokens=2)
        refused = False
    except gk.DistributionError:
        refused = True
    np.savez(
        out,
        loss=loss,
        generate_refused=refused,
        **{f"init:{k}": v for k, v in keras_init.items()},
        **{f"trained:{k}": v for k, v in weights.items()},
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
