"""Gemma 4 assistant models (multi-token-prediction drafts) against transformers, and as drafts.

The target is the tiny Gemma 4 with per-layer inputs and KV-shared layers;
the assistants are tiny random `Gemma4AssistantForCausalLM`s that transformers
built and saved (a plain output head, and the centroid-routed "ordered" one).
Each draft step must equal transformers' own: the same inputs (the target's
scaled embedding of the last token beside its final hidden state), the same
position for every step of a round, and attention to the target's keys and
values of its last cached layer of each kind.
"""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import GenerationArgumentError, UnsupportedModelError
from gemma_keras.generation.decode import Batch, Request
from tests.hf_reference import GEMMA4_TOKENS, tiny_proto, write_tiny_gemma4, write_tiny_gemma4_assistant

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = [
    "the capital of France is Paris and the model of the world",
    "hello world model user the of",
]
STEPS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(target Gemma, transformers target, {variant: (Assistant, transformers assistant)})."""
    import sentencepiece

    root = tmp_path_factory.mktemp("gemma4_assistant")
    proto = tiny_proto(GEMMA4_TOKENS)
    size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    hf_target = write_tiny_gemma4(root / "target", "kv_shared", proto, size)
    assistants = {}
    for variant, ordered in (("plain", False), ("ordered", True)):
        hf = write_tiny_gemma4_assistant(root / variant, size, ordered=ordered)
        assistants[variant] = (gk.load_assistant(root / variant), hf)
    return gk.load(root / "target"), hf_target, assistants, root


def reference_drafts(hf_target, hf_assistant, ids: list[int]):
    """transformers' drafts after the prompt, as its SinglePositionMultiTokenCandidateGenerator makes them."""
    with torch.no_grad():
        out = hf_target(torch.tensor([ids]), output_hidden_states=True, return_shared_kv_states=True)
        token = out.logits[:, -1:].argmax(-1)
        hidden = out.hidden_states[-1][:, -1:]
        tokens, states = [], []
        for _ in range(STEPS):
            embeds = torch.cat([hf_target.model.embed_tokens(token), hidden], dim=-1)
            step = hf_assistant(
                inputs_embeds=embeds,
                attention_mask=torch.ones(1, len(ids) + 1, dtype=torch.long),
                position_ids=torch.tensor([[len(ids)]]),
                shared_kv_states=out.shared_kv_states,
            )
            token, hidden = step.logits.argmax(-1), step.last_hidden_state
            tokens.append(int(token[0, 0]))
            states.append(hidden[0, 0].numpy())
    return int(out.logits[0, -1].argmax()), tokens, states


def our_drafts(lm, assistant, ids: list[int]):
    runner = lm.runner
    big, logits = Batch.prefill(runner, [Request(ids, 8)], length=64)
    last = np.asarray([[ids[-1]]], np.int32)
    (_, hidden), big.cache = runner.forward_states(last, big._runner_mask(), big.cache, big.index - 1)
    first = int(np.argmax(logits[0]))
    tokens = assistant.propose(runner, big.cache, big.mask, big.index, first, hidden[0, -1], STEPS)
    return first, tokens, big, hidden[0, -1]


@pytest.mark.parametrize("variant", ["plain", "ordered"])
def test_draft_steps_match_transformers(variant, models):
    from keras import ops

    lm, hf_target, assistants, _ = models
    assistant, hf_assistant = assistants[variant]
    for text in PROMPTS:
        ids = lm.tokenizer.encode(text)
        first, want, states = reference_drafts(hf_target, hf_assistant, ids)
        got_first, got, big, hidden = our_drafts(lm, assistant, ids)
        assert got_first == first
        assert got == want, (variant, text)
        # The first step's hidden state for the next one, compared as numbers.
        sources = [lm.runner.shared_kv(big.cache, kind) for kind in assistant.backbone.layer_types]
        visible = np.array(big.mask, np.int32)
        visible[:, big.index :] = 0
        _, state = assistant._step(lm.runner)(
            ops.convert_to_tensor(np.asarray([[first]], np.int32)),
            lm.runner.prepare_mask(visible),
            (sources, ops.convert_to_tensor(hidden.reshape(1, 1, -1))),
            ops.convert_to_tensor(big.index, "int32"),
        )
        np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(state))[0, 0], states[0], atol=1e-4)


@pytest.mark.parametrize("variant", ["plain", "ordered"])
def test_generate_with_an_assistant_is_the_models_own_greedy_output(variant, models):
    lm, _, assistants, _ = models
    assistant, _ = assistants[variant]
    for text in PROMPTS:
        plain = lm.generate(text, max_new_tokens=12, stop_token_ids=())
        assert lm.generate(text, max_new_tokens=12, stop_token_ids=(), draft=assistant, lookahead=3) == plain
        stats = lm.last_draft_stats
        assert stats.tokens == 12 and stats.proposed > 0 and stats.target_passes < 12 + 1
        streamed = "".join(lm.stream(text, max_new_tokens=12, stop_token_ids=(), draft=assistant))
        assert streamed == plain


def test_what_an_assistant_refuses(models, tmp_path):
    lm, _, assistants, root = models
    assistant, _ = assistants["plain"]
    with pytest.raises(GenerationArgumentError, match="greedily"):
        lm.generate(PROMPTS[0], max_new_tokens=4, draft=assistant, temperature=0.7)
    with pytest.raises(UnsupportedModelError, match="gemma4_assistant"):
        gk.load_assistant(root / "target")  # a model, not an assistant
    # An assistant for another model: a Gemma 4 of another width.
    other = gk.load(root / "target")
    other.runner.backbone.hidden_dim = 64  # as if the target were wider
    with pytest.raises(GenerationArgumentError, match="wide"):
        other.generate(PROMPTS[0], max_new_tokens=4, draft=assistant)


def test_an_assistant_saved_as_a_keras_preset_reloads(models, tmp_path):
    lm, _, assistants, _ = models
    assistant, _ = assistants["ordered"]
    assistant.causal_lm.save_to_preset(str(tmp_path / "preset"))
    again = gk.load_assistant(tmp_path / "preset")
    ids = lm.tokenizer.encode(PROMPTS[0])
    assert our_drafts(lm, again, ids)[1] == our_drafts(lm, assistant, ids)[1]


def test_cli_generate_with_an_assistant(models, capsys):
    from gemma_keras.cli import commands

    _, _, _, root = models
    base = ["generate", PROMPTS[0], "--model", str(root / "target"), "--max-new-tokens", "8", "--no-stream"]
    assert commands.main(base) == 0
    plain = capsys.readouterr().out
    assert commands.main([*base, "--assistant", str(root / "plain"), "--lookahead", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    assert "proposals kept" in out.err
    assert commands.main([*base, "--assistant", str(root / "plain"), "--draft", str(root / "target")]) == 2
