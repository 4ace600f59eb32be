"""Architecture records: one per Gemma architecture, and the lookups into them.

Example:

>>> from gemma_keras.architectures import by_name
>>> by_name("gemma3").hf_class
'Gemma3ForCausalLM'
"""

from gemma_keras.architectures.chat_format import GEMMA4_TURNS, GEMMA_TURNS, TurnFormat, render_messages
from gemma_keras.architectures.gemma import GEMMA, GEMMA2
from gemma_keras.architectures.gemma3 import GEMMA3
from gemma_keras.architectures.gemma3n import GEMMA3N
from gemma_keras.architectures.gemma4 import GEMMA4
from gemma_keras.architectures.record import Architecture
from gemma_keras.architectures.registry import (
    ARCHITECTURES,
    by_gguf_arch,
    by_name,
    names,
    of_backbone,
    of_config,
)

__all__ = [
    "ARCHITECTURES",
    "GEMMA",
    "GEMMA2",
    "GEMMA3",
    "GEMMA3N",
    "GEMMA4",
    "GEMMA4_TURNS",
    "GEMMA_TURNS",
    "Architecture",
    "TurnFormat",
    "by_gguf_arch",
    "by_name",
    "names",
    "of_backbone",
    "of_config",
    "render_messages",
]
