"""Writes the tiny Gemma 4 checkpoints here, and their GGUFs with llama.cpp's own converter.

    python tests/data/gemma4/make.py /path/to/llama.cpp

llama.cpp's source ships in the `llama-cpp-python` source package
(`pip download --no-deps --no-binary :all: llama-cpp-python`); the files
here were made with the one in llama-cpp-python 0.3.36, transformers 5.24
and torch 2.13. Each variant is a random `Gemma4ForCausalLM` saved by
`save_pretrained` in float16 with the tiny test vocabulary (Gemma 4's turn
and tool tokens included), then converted with
`convert_hf_to_gguf.py --outtype f16`. tests/test_gemma4_gguf.py compares
the GGUF, loaded by gemma_keras, with transformers on the checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VARIANTS = ("kv_shared", "moe")


def main(llama_cpp: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import sentencepiece
    import torch

    from tests.hf_reference import GEMMA4_TOKENS, tiny_proto, write_tiny_gemma4

    proto = tiny_proto(GEMMA4_TOKENS)
    size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    for variant in VARIANTS:
        out = HERE / variant
        write_tiny_gemma4(out, variant, proto, size, dtype=torch.float16)
        subprocess.run(
            [
                sys.executable,
                str(llama_cpp / "convert_hf_to_gguf.py"),
                str(out),
                "--outtype",
                "f16",
                "--outfile",
                str(HERE / f"{variant}.gguf"),
            ],
            check=True,
            env={"PYTHONPATH": str(llama_cpp / "gguf-py")},
        )
        (out / "generation_config.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
