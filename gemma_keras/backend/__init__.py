"""The backend layer: chooses the Keras backend before keras is imported, and reports what it offers.

It and the generation runner factory are the only places that know backend
names. See `selection.py` for the resolution order and `quiet.py` for log
handling.

Example:

>>> import gemma_keras as gk
>>> gk.use_backend("jax")  # doctest: +SKIP
>>> gk.current_backend()  # doctest: +SKIP
'jax'
"""

from gemma_keras.backend.devices import (
    Capabilities,
    available_backends,
    capabilities,
    default_dtype,
    devices,
    has_accelerator,
    require_sharding_backend,
    validate_dtype,
)
from gemma_keras.backend.keras_hub_import import (
    import_keras_hub,
    keras_hub_with_tensorflow,
    without_tensorflow,
)
from gemma_keras.backend.selection import (
    BACKENDS,
    current_backend,
    ensure_backend,
    is_installed,
    normalize_backend_name,
    resolve_backend,
    use_backend,
)

__all__ = [
    "BACKENDS",
    "Capabilities",
    "available_backends",
    "capabilities",
    "current_backend",
    "default_dtype",
    "devices",
    "ensure_backend",
    "has_accelerator",
    "import_keras_hub",
    "keras_hub_with_tensorflow",
    "is_installed",
    "normalize_backend_name",
    "require_sharding_backend",
    "resolve_backend",
    "use_backend",
    "validate_dtype",
    "without_tensorflow",
]
