"""Writes the tiny Gemma 4 and Gemma 3n checkpoints here, and their GGUFs with llama.cpp's own converter.

    python tests/data/converted/make.py /path/to/llama.cpp

llama.cpp's source ships in the `llama-cpp-python` source package
(`pip download --no-deps --no-binary :all: llama-cpp-python`); the files
here were made with the one in llama-cpp-python 0.3.36, transformers 5.24
and torch 2.13. Each checkpoint is a random `Gemma4ForCausalLM` or
`Gemma3nForCausalLM` saved by `save_pretrained` in float16 with the tiny test
vocabulary (Gemma 4's turn and tool tokens included), then converted with
`convert_hf_to_gguf.py --outtype f16`. The Gemma 3n directory also holds
`tokenizer.model`, from which the converter reads Gemma 3n's vocabulary.
tests/test_gemma4_gguf.py and tests/test_gemma3n.py compare each GGUF,
loaded by gemma_keras, with transformers on its checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GEMMA4_VARIANTS = ("kv_shared", "moe")


def main(llama_cpp: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import sentencepiece
    import torch

    from tests.hf_reference import (
        GEMMA3N_TOKENS,
        GEMMA4_TOKENS,
        tiny_proto,
        write_tiny_gemma3n,
        write_tiny_gemma4,
    )

    for name, tokens in [*((v, GEMMA4_TOKENS) for v in GEMMA4_VARIANTS), ("gemma3n", GEMMA3N_TOKENS)]:
        proto = tiny_proto(tokens)
        size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
        out = HERE / name
        if name == "gemma3n":
            write_tiny_gemma3n(out, proto, size, dtype=torch.float16)
            (out / "tokenizer.model").write_bytes(proto)
        else:
            write_tiny_gemma4(out, name, proto, size, dtype=torch.float16)
        subprocess.run(
            [
                sys.executable,
                str(llama_cpp / "convert_hf_to_gguf.py"),
                str(out),
                "--outtype",
                "f16",
                "--outfile",
                str(HERE / f"{name}.gguf"),
            ],
            check=True,
            env={"PYTHONPATH": str(llama_cpp / "gguf-py")},
        )
        (out / "generation_config.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
