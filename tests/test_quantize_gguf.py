"""`quantize="gguf"`: a GGUF's own quantized blocks, packed for torch's int4 CPU kernel."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import GenerationArgumentError, ModelNotFoundError, SourceError, UnsupportedModelError
from tests.conftest import BACKEND, mapped_file

CASES = [
    ("gemma3", "Q8_0", {}),
    ("gemma3", "Q5_0", {}),
    ("gemma2", "Q4_0", {}),
    ("gemma", "Q5_1", {}),
    ("gemma3", "Q4_K", {"hidden": 256, "head_dim": 64, "ffn": 256}),
]


@pytest.mark.parametrize(("architecture", "qtype", "config"), CASES, ids=[c[1] + "-" + c[0] for c in CASES])
def test_kept_blocks_give_float32_logits(tiny_gguf, architecture, qtype, config):
    path, _ = tiny_gguf(architecture, qtype, **config)
    ids = [2, 10, 40, 70, 100, 130, 160, 190]
    want = gk.load(path).logits(ids)  # the file's values, dequantized to float32
    if BACKEND == "torch":
        lm = gk.load(path, quantize="gguf")
        from gemma_keras.generation.torch_runner import TorchRunner

        assert isinstance(lm.runner, TorchRunner) and lm.runner.packed
        got = lm.logits(ids)
        # bfloat16 activations in the products: close, and measurably not the float32 path.
        assert not np.array_equal(got, want)
        assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
        assert np.corrcoef(got, want)[0, 1] > 0.9995
        # A long call (a prefill of 64 bucketed rows) runs the layers' float32 kernels, the same values and
        # faster there; its one row of logits still comes from the packed table.
        long_ids = ids * 5
        want_long = gk.load(path).logits(long_ids)
        got_long = lm.logits(long_ids)
        assert not np.array_equal(got_long, want_long)
        assert np.abs(got_long - want_long).max() <= 0.03 * np.abs(want_long).max()
        packed_output, lm.runner.packed_output = lm.runner.packed_output, None
        np.testing.assert_array_equal(lm.logits(long_ids), want_long)
        lm.runner.packed_output = packed_output
    else:
        with pytest.warns(UserWarning, match="torch's CPU kernel only"):
            lm = gk.load(path, quantize="gguf")
        np.testing.assert_array_equal(lm.logits(ids), want)
    assert lm.info.quantization == "gguf" and "gguf" in repr(lm)
    text = lm.generate("hello", max_new_tokens=6, stop_token_ids=())
    assert "".join(lm.stream("hello", max_new_tokens=6, stop_token_ids=())) == text


def _assert_on_disk(lm, directory: Path) -> None:
    """torch kept blocks: the embedding and every projection kernel are mapped from files in `directory`."""
    from gemma_keras.backend.no_init import _FILE_MIN_BYTES

    def where(variable) -> str | None:
        return mapped_file(variable.value.data_ptr())

    big = [v for v in lm.backbone.weights if np.prod(v.shape) * 4 >= _FILE_MIN_BYTES]
    assert big, "the tiny model has no weight large enough to page"
    for variable in big:
        assert str(directory) in (where(variable) or ""), variable.path
    norms = [v for v in lm.backbone.weights if "norm" in v.path]
    assert norms and all(where(v) is None for v in norms)  # small weights stay in memory


@pytest.mark.skipif(BACKEND != "torch", reason="only torch multiplies by the blocks")
def test_kept_blocks_leave_the_float32_weights_on_disk_until_read(tiny_gguf):
    path, _ = tiny_gguf("gemma3", "Q4_K", hidden=256, head_dim=64, ffn=256)
    lm = gk.load(path, quantize="gguf")
    _assert_on_disk(lm, Path(os.environ["GEMMA_KERAS_CACHE"]) / "paged")
    ids = [2, 10, 40, 70, 100]
    float32 = gk.load(path)
    np.testing.assert_array_equal(lm.score(ids), float32.score(ids))  # Keras reads them from the files
    # A write copies the page it changes: this model sees it, the file and the next load do not.
    kernel = lm.backbone.transformer_layers[0].ffw_linear.kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    assert not np.array_equal(lm.score(ids), float32.score(ids))
    np.testing.assert_array_equal(gk.load(path, quantize="gguf").score(ids), float32.score(ids))


def test_the_mode_is_chosen_at_load(tiny_model):
    with pytest.raises(GenerationArgumentError, match="chosen when loading"):
        tiny_model("gemma3").quantize("gguf")
    with pytest.raises(GenerationArgumentError, match="'gguf'"):
        gk.load(quantize="gguff")


def test_a_source_without_blocks_is_refused_before_loading(tmp_path):
    with pytest.raises(SourceError, match="not a GGUF file"):
        gk.load(tmp_path, quantize="gguf")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        gk.load(tmp_path / "missing.gguf", quantize="gguf")


@pytest.mark.parametrize("name", ["moe", "gemma3n"])
def test_gemma4_and_3n_are_refused_before_loading_on_every_backend(name, monkeypatch):
    from gemma_keras.sources import resolve

    monkeypatch.setattr(resolve, "_load", lambda *args: pytest.fail("the model was loaded first"))
    path = Path(__file__).parent / "data" / "converted" / f"{name}.gguf"  # llama.cpp's converter wrote it
    with pytest.raises(UnsupportedModelError, match="Gemma 1, 2 and 3 GGUF"):
        gk.load(path, quantize="gguf")


@pytest.mark.skipif(BACKEND != "torch", reason="torch's packed kernel")
def test_packed_linear_matches_its_codes():
    import torch

    from gemma_keras.formats.gguf_blocks import GroupCodes, requantize
    from gemma_keras.generation.packed_torch import PackedLinear, concat, pack_weights

    rng = np.random.default_rng(0)
    four = GroupCodes(
        rng.integers(0, 16, (48, 96), dtype=np.uint8),
        rng.uniform(0.01, 0.02, (48, 3)).astype(np.float32),
        rng.uniform(-0.2, 0.0, (48, 3)).astype(np.float32),
        4,
        True,
    )
    eight = requantize(rng.normal(size=(16, 96)).astype(np.float32))  # symmetric 8-bit
    x = torch.from_numpy(rng.normal(size=(5, 96)).astype(np.float32))
    for codes in (four, eight, concat([four, eight])):
        got = PackedLinear(codes)(x)
        want = x @ torch.from_numpy(codes.dequantize()).T
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert float((got - want).abs().max()) <= 0.01 * float(want.abs().max())
    both = pack_weights([("a", four), ("b", eight), ("c", four)], [("a", "b"), ("c", "d")])
    assert set(both) == {("a", "b"), "c"}  # "d" never came: "c" stands alone
    a, b = both[("a", "b")](x).split([48, 16], dim=-1)
    torch.testing.assert_close(a, PackedLinear(four)(x), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(b, PackedLinear(eight)(x), atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's packed kernel")
def test_a_weight_packed_in_chunks_is_the_whole_matrix_packed_at_once():
    """`PackedLinear` packs a tall weight `_ROWS_PER_PACK` rows at a time, so that only a chunk of
    int32 codes exists at once; its bytes must be what one call over every row gives."""
    import torch

    from gemma_keras.formats.gguf_blocks import GroupCodes
    from gemma_keras.generation.packed_torch import _ROWS_PER_PACK, PackedLinear

    rng = np.random.default_rng(1)
    rows = 2 * _ROWS_PER_PACK + 40  # three chunks, the last one short; the halves are padded to 16
    for bits in (4, 8):
        codes = rng.integers(0, 2**bits, (rows, 64), dtype=np.uint8)
        scale = rng.uniform(0.01, 0.02, (rows, 2)).astype(np.float32)
        packed = PackedLinear(GroupCodes(codes, scale, -scale, bits, True)).packed
        if bits == 4:
            stacked = codes
        else:  # the low nibbles padded to 16 rows, then the high ones
            low = np.zeros((rows + (-rows % 16), 64), np.uint8)
            low[:rows] = codes & 0x0F
            stacked = np.concatenate([low, codes >> 4])
        whole = np.concatenate([stacked, np.zeros((-len(stacked) % 16, 64), np.uint8)])
        want = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(whole.astype(np.int32)), 1)
        assert torch.equal(packed, want), bits


def _runner_perplexity(lm, text: str, piece: int = 16) -> float:
    """Perplexity through the model's runner, fed `piece` tokens at a time as decoding feeds it: the packed
    blocks serve calls of few rows (`torch_runner.PACKED_MAX_ROWS`), and `score()` runs the Keras layers."""
    ids = lm.tokenizer.encode(text)
    runner = lm.runner
    cache, mask = runner.new_cache(1, len(ids)), runner.prepare_mask(np.ones((1, len(ids))))
    parts = []
    for start in range(0, len(ids), piece):
        logits, cache = runner.forward_all(np.asarray([ids[start : start + piece]]), mask, cache, start)
        parts.append(logits[0])
    logits = np.concatenate(parts)[:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return math.exp(-logprobs[np.arange(len(ids) - 1), ids[1:]].mean())


@pytest.mark.real
@pytest.mark.skipif(BACKEND != "torch", reason="the packed blocks run on torch; elsewhere they are float32")
def test_real_270m_kept_blocks_keep_its_perplexity(real_model):
    """The embedded Q4_K_M file's own blocks: perplexity not over 1% above float32's (the issue's int8 target).

    Measured 2026-11-30 on the Zen of Python: float32 7.850; packed 7.869 fed 16 tokens per call (7.71 to
    7.83 in whole-text calls before those took the float32 kernels). The products round
    their inputs and outputs to bfloat16, and this model's perplexity moves by about 1.5% with such
    rounding noise either way (ulp-level changes elsewhere moved it from 7.83 to 7.71), so the lower
    bound only catches a broken model.
    """
    from tests.test_quantize_real import zen_of_python

    text = zen_of_python()
    base = _runner_perplexity(real_model, text)
    lm = gk.load(quantize="gguf")
    assert lm.runner.packed and lm.info.quantization == "gguf"
    ratio = _runner_perplexity(lm, text) / base
    assert 0.95 < ratio < 1.01, ratio
    prompt = "The capital of France is"
    assert lm.generate(prompt, max_new_tokens=8) == real_model.generate(prompt, max_new_tokens=8)


KEPT_BLOCKS_PEAK = """
import gemma_keras as gk

lm = gk.load(quantize="gguf")
short = lm.generate("The capital of France is", max_new_tokens=8)
long = lm.generate("The history of Paris. " * 100, max_new_tokens=8)  # 600 tokens: the float32 kernels
assert short.strip() and long.strip()
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024)
"""


@pytest.mark.real
@pytest.mark.skipif(BACKEND != "torch", reason="the packed blocks run on torch; elsewhere they are float32")
def test_real_270m_kept_blocks_peak_memory_is_under_1_5_gb():
    """#13's memory row: a process that loads the 270M with its kept blocks and generates, a short and a
    600-token prompt, peaks under 1.5 GB. Measured 2026-12-01: 1,280 MB (2,330 MB when the float32
    weights were held in memory rather than mapped from files)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", KEPT_BLOCKS_PEAK],
        env={**os.environ, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb <= 1536, peak_mb


def test_the_cli_keeps_blocks(tiny_gguf, capsys):
    import warnings

    from gemma_keras import cli

    path, _ = tiny_gguf("gemma3", "Q8_0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # off torch: "the same values, no speed-up"
        expected = gk.load(path, quantize="gguf").generate("hello", max_new_tokens=6)
    args = [
        "generate",
        "hello",
        "--model",
        str(path),
        "--max-new-tokens",
        "6",
        "--no-stream",
        "--quantize",
        "gguf",
    ]
    if BACKEND == "torch":
        assert cli.main(args) == 0
    else:  # the CLI says that the blocks buy nothing here
        with pytest.warns(UserWarning, match="torch's CPU kernel only"):
            assert cli.main(args) == 0
    assert capsys.readouterr().out == expected + "\n"
    serve = ["serve", str(path), "--quantize", "gguf", "--adapters", str(path)]
    assert cli.main(serve) == 2
    assert "--quantize gguf cannot keep" in capsys.readouterr().err


@pytest.mark.skipif(
    BACKEND != "torch", reason="the packed blocks run on torch; elsewhere this is tests/test_serve.py"
)
def test_server_batches_kept_blocks_like_lone_requests(tiny_gguf):
    """Continuous batching over the packed products: 8 streams over 4 rows each get what they get alone."""
    import threading

    openai = pytest.importorskip("openai")
    from gemma_keras.serving.server import Server

    path, _ = tiny_gguf("gemma3", "Q8_0")
    lm = gk.load(path, quantize="gguf")
    jobs = [(f"the {w} of", 4 + 3 * i) for i, w in enumerate(("France", "Paris", "model", "world") * 2)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    server = Server(lm, port=0, max_batch=4, max_queue=16).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def run(i: int) -> None:
            prompt, budget = jobs[i]
            try:
                stream = client.completions.create(
                    model=server.state.model_name,
                    prompt=prompt,
                    max_tokens=budget,
                    temperature=0,
                    stream=True,
                )
                results[i] = "".join(c.choices[0].text for c in stream)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert not errors
    for i, (prompt, budget) in enumerate(jobs):
        assert results[i] == lm.generate(prompt, max_new_tokens=budget), i
