"""Sources: from what the user names (a path, a preset, a hub handle) to a loaded `Gemma`.

- `resolve`: `load`, which dispatches on the kind of source;
- `convert`: GGUF to a KerasHub causal LM;
- `cache`: converted GGUF files, keyed by their sha256, with atomic entries;
- `embedded`: the Gemma 3 270M that ships as a Python package;
- `hub`: whether Hugging Face or Kaggle can be reached.
"""

from gemma_keras.sources.embedded import embedded_gguf
from gemma_keras.sources.resolve import known_preset_names, load, load_gguf

__all__ = ["embedded_gguf", "known_preset_names", "load", "load_gguf"]
