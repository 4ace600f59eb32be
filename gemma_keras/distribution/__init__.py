"""Data and model parallelism over a `("batch", "model")` device mesh (JAX only).

`distribute()` (also `gemma_keras.distribute`) sets Keras' global
distribution, so every model loaded afterwards creates its variables on the
mesh; `layouts.RULES` decides each variable's layout when it is created.
See docs/distribution.md.
"""

from gemma_keras.distribution.layouts import BATCH, MODEL, RULES, axes_for, layout_map, variable_shapes
from gemma_keras.distribution.mesh import current, distribute

__all__ = ["BATCH", "MODEL", "RULES", "axes_for", "current", "distribute", "layout_map", "variable_shapes"]
