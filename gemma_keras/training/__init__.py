"""Training: LoRA supervised fine-tuning on any backend.

- `config`: `FinetuneConfig`, every setting in one place;
- `data`: records (JSONL, lists, `datasets`) to token batches with a loss mask;
- `lora`: adapters on KerasHub layers, and adapter files;
- `checkpoints`: resumable, atomic checkpoints;
- `loop`: `finetune(backbone, tokenizer, data, config, chat_format)`.
"""

from gemma_keras.training.config import FinetuneConfig
from gemma_keras.training.data import DataStats
from gemma_keras.training.loop import FinetuneResult, finetune

__all__ = ["DataStats", "FinetuneConfig", "FinetuneResult", "finetune"]
