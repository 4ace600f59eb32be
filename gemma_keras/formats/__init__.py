"""File formats: reading, checking and writing GGUF, safetensors checkpoints and Keras presets.

- `gguf_header`: reads a GGUF header (metadata and tensor table), checked against the file;
- `gguf_reader`, `gguf_writer`: llama.cpp's format;
- `hf_checkpoint`: transformers' safetensors directory;
- `keras_preset`, `manifest`: KerasHub presets and our metadata beside them;
- `sizes`, `preset_check`: the bounds on every size a file declares, and their check of
  preset and checkpoint directories before KerasHub builds anything;
- `sentencepiece`: the tokenizer model, rebuilt from a GGUF vocabulary and run;
- `tensor_names`: the one table of weight names shared by import and export;
- `staging`: writes that appear whole or not at all;
- `export`: picks the writer for `Gemma.export`.
"""

from gemma_keras.formats.export import DTYPES, FORMATS, export
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.sentencepiece import GemmaTokenizer

__all__ = ["DTYPES", "FORMATS", "GemmaTokenizer", "ModelInfo", "export"]
