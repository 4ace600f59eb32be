"""Generation: runners that run the model, the one decode loop over them, samplers, text and chat.

- `runner`: the `Runner` protocol and `make_runner`, the one factory;
- `keras_runner`, `torch_runner`: the two runners;
- `decode`: the token loop (`Batch`, `decode`, `generate_ids`);
- `sampling`: NumPy samplers, the same on every backend;
- `streaming`: token ids to final text, with stop strings;
- `chat`: multi-turn conversations.
"""

from gemma_keras.generation.chat import Chat
from gemma_keras.generation.decode import Batch, Event, Request, decode, generate_ids
from gemma_keras.generation.runner import Runner, make_runner
from gemma_keras.generation.sampling import SamplingParams

__all__ = [
    "Batch",
    "Chat",
    "Event",
    "Request",
    "Runner",
    "SamplingParams",
    "decode",
    "generate_ids",
    "make_runner",
]
