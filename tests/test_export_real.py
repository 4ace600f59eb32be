"""Exports of the real Gemma 3 270M, read back by us and by transformers. Run with `-m real`.

Measured on the CPU in float32 (JAX; see docs/export.md for all backends):
safetensors vs transformers <= 8e-5, GGUF f32 exact, f16 <= 0.021 and
q8_0 <= 0.49 on logits of magnitude ~30. The bounds below leave headroom.
"""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import JAX_SESSION_ONLY, generate_ids
from tests.hf_reference import gguf_reference, shared_reference
from tests.test_real_model import PROMPTS, TRICKY

pytestmark = pytest.mark.real
GGUF_TOL = {"f32": 1e-5, "f16": 0.05, "q8_0": 1.0}
MARGIN = 0.05  # as in test_real_model: greedy steps closer than this may flip
STEPS = 16


@pytest.fixture(scope="module")
def prompt_ids(real_model):
    return [real_model.tokenizer.encode(p) for p in PROMPTS[:3]]


@pytest.mark.parity
def test_real_safetensors_matches_transformers(real_model, prompt_ids, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.hf_reference import hf_logits

    dest = real_model.export(tmp_path / "hf", format="safetensors")
    model = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32).eval()
    for ids in prompt_ids:
        theirs, ours = hf_logits(model, ids), real_model.score(ids)
        print(f"safetensors f32 vs transformers: {np.abs(theirs - ours).max():.2g}")  # shown with -s
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(str(dest))
    for text in PROMPTS + TRICKY:
        assert tokenizer.encode(text) == real_model.tokenizer.encode(text, special=True), text


# f16 and q8_0 differ from f32 only in numpy's encoding and decoding; the backend's part is the f32 case.
@pytest.mark.parametrize(
    "dtype",
    ["f32", pytest.param("f16", marks=JAX_SESSION_ONLY), pytest.param("q8_0", marks=JAX_SESSION_ONLY)],
)
def test_real_gguf_reads_back(real_model, prompt_ids, tmp_path, isolated_cache, dtype):
    # isolated_cache: each read-back converts a 1 GB entry that no other test wants.
    again = gk.load(real_model.export(tmp_path / "m.gguf", dtype=dtype))
    for ids in prompt_ids:
        diff = np.abs(again.score(ids) - real_model.score(ids)).max()
        print(f"gguf {dtype} read back: {diff:.2g}")
        assert diff <= GGUF_TOL[dtype], (dtype, diff)


@pytest.mark.parity
def test_real_gguf_reads_in_transformers(real_model, prompt_ids, tmp_path, isolated_cache):
    from gemma_keras.formats.manifest import file_sha256

    dest = real_model.export(tmp_path / "m.gguf", dtype="f16")
    ours = gk.load(dest)
    # Keyed by the exported bytes: a backend whose export differs gets its own reference.
    prompts = PROMPTS[: len(prompt_ids)]
    key = {"gguf": file_sha256(dest), "prompts": prompts, "steps": STEPS}
    reference = shared_reference("export-f16", key, lambda: gguf_reference(dest, prompts, STEPS))["paths"]
    compared = 0
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        theirs = reference[prompt]
        assert theirs["ids"] == ids
        np.testing.assert_allclose(ours.logits(ids), theirs["first_logits"], rtol=0, atol=1e-3)
        close = np.nonzero(theirs["margins"] < MARGIN)[0]
        steps = int(close[0]) if len(close) else STEPS
        mine = generate_ids(ours, [prompt], STEPS, gk.SamplingParams(), (), True)[0]
        assert mine[:steps] == theirs["tokens"][:steps], prompt
        if steps == STEPS:
            assert ours.tokenizer.decode(mine) == theirs["text"]
            compared += 1
    assert compared >= 2  # at least two prompts compared over every step
