"""Show the installed Keras backends and the one gemma_keras uses.

Loads no model:

    python examples/switch_backends.py
    KERAS_BACKEND=torch python examples/switch_backends.py
    python examples/switch_backends.py tensorflow
"""

from __future__ import annotations

import sys

import gemma_keras as gk
from gemma_keras.backend import resolve_backend


def main() -> None:
    name, origin = resolve_backend()
    if len(sys.argv) > 1:
        name, origin = gk.use_backend(sys.argv[1]), "command line"
    else:
        # Pin the resolved choice now: listing TensorFlow's devices imports
        # TensorFlow, which imports keras, and keras then fixes its backend
        # from KERAS_BACKEND or its config file.
        gk.use_backend(name)
    print(f"gemma_keras uses {name} (chosen by: {origin})")
    for backend, info in gk.available_backends().items():
        print(f"  {backend:<11} {info['version']:<12} devices: {', '.join(info['devices'])}")
    # Still the same backend, now that keras may have been imported.
    assert gk.current_backend() == name


if __name__ == "__main__":
    main()
