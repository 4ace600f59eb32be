"""`TorchRunner`: a plain-PyTorch forward pass over a KerasHub Gemma backbone's own weights.

On the torch backend Keras runs eagerly, and for a one-token decode step its
per-layer, per-op Python bookkeeping costs more than the arithmetic: the
270M model decoded at about 8 tokens/s against JAX's 20. `torch.compile`
does not help either (Keras' layer code breaks the graph; compiling took two
minutes and ran slower). So on torch the runner factory picks this runner:
the same computation as KerasHub's Gemma, Gemma 2, Gemma 3, Gemma 3n and
Gemma 4 (text) decoder blocks, written as a few dozen torch calls per layer. On
random 512-wide, 8-layer Gemma 4 models it decoded 2.1 to 2.6 times as fast
as Keras' layers, and 5.3 to 7 times with a mixture of experts
(docs/benchmarks.md).

Gemma 4 (`cache_layout="per_layer"`) keeps, as `KerasRunner` does, one
(keys, values) pair per layer that computes them, in that layer's own head
count and width; a KV-shared layer has none and reads its source layer's,
written earlier in the same call. Its mixture of experts runs only the
experts each token picked.

Gemma 3n (`cache_layout="altup"`, text only) caches the same way, a
KV-shared layer reading the last unshared layer of its kind; its pairs are
`(rows, length, heads, dim)` like every other here, not KerasHub's
heads-before-positions stack. Its four AltUp streams, LAuReL branch,
per-layer inputs and sparse MLPs follow `KerasRunner._hidden_altup`
through KerasHub's layers, down to one quirk: a query that sees no key gets
the average of every cached value, as KerasHub's softmax over a fully
masked row gives, not zeros.

It reads the backbone's live variables on every call and copies none of
them, so it never goes stale. The one exception is `packed`: Gemma 1-3
projections handed in as `PackedLinear` (a GGUF's own quantized blocks, see
`packed_torch`), which calls of up to `PACKED_MAX_ROWS` token rows multiply
by instead of the Keras kernels that hold the same values in float32.
Settings (sliding windows, soft caps, query scale, RoPE frequencies) are
read from KerasHub's own layer objects. Models whose layers carry LoRA
adapters or Keras quantization use the Keras runner. Tests hold it to
KerasHub's logits on every architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemma_keras.errors import GenerationArgumentError
from gemma_keras.generation.keras_runner import last_owners
from gemma_keras.generation.packed_torch import PackedLinear

# Query positions per pass of a long Gemma 1-3 prompt (see `TorchRunner.forward`).
PREFILL_CHUNK = 512
# The output projection pads a call of more rows than `_FEW_ROWS` and fewer than `_PANEL` to `_PANEL`
# rows (`TorchRunner._logits`).
_FEW_ROWS, _PANEL = 4, 16
# Token rows up to which a call multiplies by packed weights. Past it (a prefill) the float32 kernels,
# which hold the same values, are faster: at 512 rows the 270M prefilled 483 tok/s in float32 and
# 313 packed, because the int4 kernel is slower than MKL's float32 one on many rows.
PACKED_MAX_ROWS = 32


@dataclass(frozen=True)
class _Products:
    """One Gemma 1-3 layer's packed weights (`PackedLinear`), each None where the Keras kernel serves."""

    qkv: Any = None  # query, key and value as one product
    query: Any = None
    key: Any = None
    value: Any = None
    out: Any = None
    gate_up: Any = None  # the gate and up projections as one product
    gate: Any = None
    up: Any = None
    down: Any = None


_KERAS_KERNELS = _Products()


@dataclass
class _Block:
    block: Any
    scale: float
    window: int | None
    soft_cap: float | None
    qk_norm: bool
    post_norms: bool
    inv_freq: Any
    packed: _Products = _KERAS_KERNELS


@dataclass
class _Gemma4Block:
    block: Any
    window: int | None
    soft_cap: float | None
    # Zero past the rotated dimensions: partial RoPE is full RoPE that turns those by angle 0.
    inv_freq: Any
    slot: int  # the cache this layer reads: its own, or (KV-shared) its source layer's


@dataclass
class _Gemma3nBlock:
    block: Any
    window: int | None
    inv_freq: Any
    slot: int  # its own cache, or (KV-shared) the last unshared layer of the same kind's
    shared: bool
    # Activation sparsity: the gate's cutoff in standard deviations above its mean, or None.
    cutoff: Any


def _paths(layer: int) -> dict[str, str]:
    """Gemma 1-3: the Keras weight path of each of a layer's products."""
    at = f"transformer_layers.{layer}."
    return {
        "query": f"{at}attention.query_dense.kernel",
        "key": f"{at}attention.key_dense.kernel",
        "value": f"{at}attention.value_dense.kernel",
        "out": f"{at}attention.output_dense.kernel",
        "gate": f"{at}gating_ffw.kernel",
        "up": f"{at}gating_ffw_2.kernel",
        "down": f"{at}ffw_linear.kernel",
    }


def fused_products(layers: int) -> list[tuple[str, ...]]:
    """Gemma 1-3: the packed weights each layer multiplies as one (q, k, v; gate, up), by Keras weight path."""
    out = []
    for i in range(layers):
        paths = _paths(i)
        out.append((paths["query"], paths["key"], paths["value"]))
        out.append((paths["gate"], paths["up"]))
    return out


def _layer_products(packed: dict, layer: int) -> _Products:
    paths = _paths(layer)
    single = {name: packed.get(path) for name, path in paths.items()}
    return _Products(
        qkv=packed.get((paths["query"], paths["key"], paths["value"])),
        gate_up=packed.get((paths["gate"], paths["up"])),
        **single,
    )


def _version(tensor) -> int | None:
    """The tensor's in-place version counter, or None for a tensor made under inference_mode (it has none)."""
    return None if tensor.is_inference() else tensor._version


def unsupported(backbone) -> str | None:
    """Why this runner cannot run the backbone's layers as they are now, or None."""
    for layer in backbone._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            return f"layer {layer.name!r} carries LoRA adapters (merge them, or use the Keras runner)"
        if getattr(layer, "quantization_mode", None):
            return f"layer {layer.name!r} is quantized by Keras"
    processor = getattr(backbone, "embedding_processor", None)  # Gemma 3n: text only
    if processor is not None and (processor.embed_vision or processor.embed_audio):
        return "it has vision or audio embedders (text only here)"
    return None


class TorchRunner:
    """Runs cached forward passes in plain torch; see `runner.Runner`."""

    chunk = 0  # eager torch has no per-call compile cost for chunks to spread
    compiles = False
    batch_multiple = 1
    spans = False  # eager attention is cut to the written positions already (`_attend`)

    def __init__(self, backbone, arch, packed: dict | None = None):
        import torch
        from keras import ops

        self.torch = torch
        self._scalars: dict = {}
        self._norms: dict = {}  # per norm layer: (its weight tensor, that tensor's version, 1 + weight)
        self._angles: dict = {}  # RoPE's cos and sin for the positions of the current call
        # Keras weight path (`token_embedding.embeddings`, `transformer_layers.{i}.<attribute path>`) to
        # the `PackedLinear` that replaces it in the products; Gemma 1-3 only.
        self.packed = dict(packed or {})
        self.packed_output = self.packed.get("token_embedding.embeddings")
        if self.packed and not arch.keeps_gguf_blocks:
            raise GenerationArgumentError(f"packed weights are not wired up for {arch.title} here.")
        self.backbone = backbone
        self.arch = arch
        self.gemma4 = arch.cache_layout == "per_layer"
        self.gemma3n = arch.cache_layout == "altup"
        self.blocks = []
        self._owners = []  # Gemma 4 and 3n: the layers that compute keys and values, one cache each
        if self.gemma3n:
            self._init_gemma3n(backbone.language_model)
            return
        self.vocab_size = int(backbone.vocabulary_size)
        self.hidden = backbone.hidden_dim
        self._table = backbone.token_embedding.embeddings
        for i, block in enumerate(backbone.transformer_layers):
            a = block.attention
            if not self.gemma4:
                if a.query_head_dim_normalize:
                    scale = 1 / np.sqrt(a.head_dim)
                else:
                    scale = 1 / np.sqrt(a.hidden_dim // a.num_query_heads)
                self.blocks.append(
                    _Block(
                        block=block,
                        scale=float(scale),
                        window=a.sliding_window_size if a.use_sliding_window_attention else None,
                        soft_cap=a.logit_soft_cap,
                        qk_norm=bool(getattr(a, "use_query_key_norm", False)),
                        post_norms=bool(block.use_post_attention_norm),
                        inv_freq=ops.convert_to_tensor(a.rope_layer._get_inverse_freq(a.head_dim)),
                        packed=_layer_products(self.packed, i) if self.packed else _KERAS_KERNELS,
                    )
                )
                continue
            inv_freq = ops.convert_to_tensor(a.rope_layer._get_inverse_freq(a.rotary_dim))
            inv_freq = torch.cat([inv_freq, inv_freq.new_zeros(a.head_dim // 2 - inv_freq.shape[0])])
            if block.is_kv_shared_layer:
                slot = self.blocks[block.kv_shared_layer_index].slot
            else:
                slot = len(self._owners)
                self._owners.append(block)
            sliding = block.use_sliding_window_attention and not block.is_global_attention
            self.blocks.append(
                _Gemma4Block(
                    block=block,
                    window=block.sliding_window_size if sliding else None,
                    soft_cap=a.logit_soft_cap,
                    inv_freq=inv_freq,
                    slot=slot,
                )
            )
        self.final_cap = backbone.token_embedding.logit_soft_cap
        # Everything made here must live where the weights are (a GPU, say).
        self.device = self._table.value.device

    def _init_gemma3n(self, text):
        """Gemma 3n: the text model inside the backbone; caches as `KerasRunner` maps them."""
        import torch
        from keras import ops

        self.text = text
        self.vocab_size = int(text.vocab_size)
        self.hidden = text.hidden_size
        self._table = text.embed_tokens.embedding.embeddings
        self.final_cap = text.final_logit_soft_cap
        self.device = self._table.value.device
        last: dict[str, int] = {}  # a KV-shared layer reads the last unshared layer of its kind
        for i, block in enumerate(text.transformer_layers):
            a = block.attention
            kind = text.layer_types[i]
            shared = i >= text.first_kv_shared_layer_idx > 0
            if shared:
                slot = self.blocks[last[kind]].slot
            else:
                last[kind] = i
                slot = len(self._owners)
                self._owners.append(block)
            cutoff = None
            if block.mlp.activation_sparsity > 0.0:
                # As KerasHub's `_gaussian_topk`, in float32: the normal quantile of the target sparsity.
                target = torch.tensor(block.mlp.activation_sparsity, dtype=torch.float32)
                cutoff = torch.special.erfinv(2 * target - 1) * torch.tensor(2.0).sqrt()
                cutoff = float(cutoff)
            self.blocks.append(
                _Gemma3nBlock(
                    block=block,
                    window=a.sliding_window,
                    inv_freq=ops.convert_to_tensor(a.rotary_embedding._get_inverse_freq(a.head_dim)),
                    slot=slot,
                    shared=shared,
                    cutoff=cutoff,
                )
            )

    def new_cache(self, rows: int, length: int) -> list:
        """One (keys, values) pair per layer; on Gemma 4 and 3n per layer that computes them, in its own shape."""
        torch = self.torch
        dtype = self._table.value.dtype
        if self.gemma4:
            heads = [(b.attention.effective_num_kv_heads, b.attention.head_dim) for b in self._owners]
        elif self.gemma3n:
            heads = [(b.attention.num_key_value_heads, b.attention.head_dim) for b in self._owners]
        else:
            heads = [(self.backbone.num_key_value_heads, self.backbone.head_dim)] * len(self.blocks)
        shapes = [(rows, length, *h) for h in heads]
        return [
            (torch.zeros(s, dtype=dtype, device=self.device), torch.zeros(s, dtype=dtype, device=self.device))
            for s in shapes
        ]

    def _rms(self, x, norm):
        # As KerasHub's RMSNormalization: float32, x / sqrt(mean(x^2) + eps) * (1 + w); one fused op.
        weight = self._norm_weight(norm)
        rms_norm = self.torch.nn.functional.rms_norm
        if x.dtype == weight.dtype:
            return rms_norm(x, weight.shape, weight, norm.epsilon)
        return rms_norm(x.float(), weight.shape, weight, norm.epsilon).to(x.dtype)

    def _norm_weight(self, norm):
        """`1 + w` in float32, made again only when the weight changes (fine-tuning, merged adapters).

        A decode step of the 270M runs 109 norms; adding 1 to each weight on every call cost
        about 0.6 ms a step.
        """
        value = norm.scale.value
        kept = self._norms.get(id(norm))
        if kept is not None and kept[0] is value and kept[1] == _version(value):
            return kept[2]
        weight = 1 + value.float()
        version = _version(value)
        if version is not None:  # a tensor made under inference_mode has no version: not kept
            self._norms[id(norm)] = (value, version, weight)
        return weight

    @staticmethod
    def _rms4(x, norm):
        # As Gemma 4's RMSNormalization: float32, x * (mean(x^2) + eps)^-0.5 * w, with w itself, not
        # 1 + w; its value and router norms (Gemma4VNorm) have no w.
        dtype = x.dtype
        x = x.float()
        x = x * (x.square().mean(dim=-1, keepdim=True) + norm.epsilon).pow(-0.5)
        if hasattr(norm, "scale"):
            x = x * norm.scale.value.float()
        return x.to(dtype)

    @staticmethod
    def _rms3n(x, norm):
        # As Gemma3nRMSNorm: in the activations' dtype, x * rsqrt(mean(x^2) + eps) * w; its value norm has no w.
        x = x * (x.square().mean(dim=-1, keepdim=True) + norm.eps).rsqrt()
        return x * norm.scale.value.to(x.dtype) if norm.with_scale else x

    def _rope(self, x, positions, inv_freq):
        torch = self.torch
        # The angles depend only on the positions of this call: found once per frequency table, not per layer.
        key = (id(inv_freq), x.dtype)
        half = inv_freq.shape[0]
        if key not in self._angles:
            freq = positions[:, None] * inv_freq[None, :]
            # x * cos + cat(-x2, x1) * sin, where cat(-x2, x1) is x rolled by half a head with its
            # first half negated: the sign goes into sin once per call, and the roll is one op.
            self._angles[key] = (
                torch.cat((freq, freq), dim=-1).cos().to(x.dtype)[None, :, None, :],
                torch.cat((-freq.sin(), freq.sin()), dim=-1).to(x.dtype)[None, :, None, :],
            )
        cos, sin = self._angles[key]
        return torch.addcmul(x * cos, x.roll(half, dims=-1), sin)

    @staticmethod
    def _heads_in(x, kernel):
        """(b, t, hidden) x (heads, hidden, dim) -> (b, t, heads, dim), no weight copy."""
        b, t, h = x.shape
        out = x.reshape(1, b * t, h).matmul(kernel)  # (heads, b*t, dim)
        return out.permute(1, 0, 2).reshape(b, t, kernel.shape[0], kernel.shape[2])

    def prepare_mask(self, padding_mask: np.ndarray):
        return self.torch.as_tensor(np.asarray(padding_mask, dtype=np.int32), device=self.device)

    def copy_rows(self, cache, rows: list[int], source, source_rows: list[int]):
        torch = self.torch
        with torch.inference_mode():
            where = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            taken = torch.as_tensor(source_rows, dtype=torch.long, device=self.device)
            for (k, v), (k2, v2) in zip(cache, source, strict=True):
                k[where] = k2[taken]
                v[where] = v2[taken]
        return cache

    def select_rows(self, cache, rows: list[int], size: int):
        torch = self.torch
        with torch.inference_mode():
            index = torch.as_tensor(rows, dtype=torch.long, device=self.device)

            def select(x):
                out = x.new_zeros((size, *x.shape[1:]))
                out[: len(rows)] = x.index_select(0, index)
                return out

            return [(select(k), select(v)) for k, v in cache]

    def lengthen(self, cache, length: int):
        with self.torch.inference_mode():

            def longer(x):
                out = x.new_zeros((x.shape[0], length, *x.shape[2:]))
                out[:, : x.shape[1]] = x
                return out

            return [(longer(k), longer(v)) for k, v in cache]

    def forward(self, token_ids, mask, cache, index: int, whole: bool = False, every_position: bool = False):
        """Numpy tokens in, float32 numpy logits (after the last token, or after each) out.

        `whole` changes nothing here: eager calls compile nothing, and attend
        over the written positions only.

        Prompts longer than `PREFILL_CHUNK` run in chunks of that
        many positions, one after another: attention scores then take
        `chunk x length`, not `length x length`, and a sliding layer's chunk
        reads only the keys within its window. Architectures whose calls
        cannot be cut (`Architecture.cuttable_calls`) run whole.
        """
        torch = self.torch
        ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=self.device)
        index = int(index)
        step = PREFILL_CHUNK if self.arch.cuttable_calls else ids.shape[1]
        outs = []
        with torch.inference_mode():
            for start in range(0, ids.shape[1], max(step, 1)):
                logits, cache = self._forward(
                    ids[:, start : start + step], mask, cache, index + start, every_position
                )
                outs.append(logits.float().cpu().numpy())
        return (np.concatenate(outs, axis=1) if every_position else outs[-1]), cache

    def forward_at(self, token_ids, mask, cache, index: int, last: int):
        """As `KerasRunner.forward_at`; eager, so the padding is simply not fed."""
        return self.forward(np.asarray(token_ids)[:, : last + 1], mask, cache, index)

    def forward_all(self, token_ids, mask, cache, index: int):
        """Logits after every fed token, `(rows, t, vocab)`."""
        return self.forward(token_ids, mask, cache, index, every_position=True)

    def forward_states(self, token_ids, mask, cache, index: int):
        """Gemma 4: `((logits, final-normed hidden states) after every fed token, cache)`."""
        if not self.gemma4:
            raise GenerationArgumentError("only Gemma 4 exposes its hidden states here.")
        torch = self.torch
        with torch.inference_mode():
            (logits, hidden), cache = self._forward(
                torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=self.device),
                mask,
                cache,
                int(index),
                every_position=True,
                states=True,
            )
        return (logits.float().cpu().numpy(), hidden.float().cpu().numpy()), cache

    def kv_sources(self) -> dict:
        """Gemma 4: see `keras_runner.last_owners`."""
        return last_owners(self.backbone, self._owners)

    def shared_kv(self, cache: list, kind: str):
        """The cache of `kv_sources()[kind]` stacked as KerasHub's blocks read it: a copy (an assistant's)."""
        keys, values = cache[self._owners.index(self.kv_sources()[kind])]
        return self.torch.stack((keys, values), dim=1)

    def greedy_chunk(self, token_ids, mask, cache, index: int):
        raise NotImplementedError("TorchRunner offers no greedy chunks (chunk = 0).")

    def _logits(self, x, embeddings):
        """`x @ embeddings.T`, split over the vocabulary into one block per thread.

        For a handful of rows this is a matrix-vector product over the whole
        embedding table (670 MB in float32 for a 262k vocabulary), and MKL runs
        a single such product on one thread: about 45 ms on two cores. As a
        batched product over blocks it uses every thread: about 23 ms.

        Between 5 and 15 rows (a serving batch), MKL's float32 product over
        the table ran 1.1-3x slower than at 16 rows (8 rows: 84 ms, 16 rows:
        49 ms, the 262k x 640 table on two threads), so those rows are padded
        to 16 and the padding's logits dropped.
        """
        torch = self.torch
        rows = x.shape[0]
        if _FEW_ROWS < rows < _PANEL and embeddings.dtype == torch.float32 and x.device.type == "cpu":
            padded = torch.cat([x, x.new_zeros(_PANEL - rows, x.shape[1])])
            return padded.matmul(embeddings.T)[:rows]
        blocks = torch.get_num_threads()
        vocab = embeddings.shape[0]
        if blocks < 2 or vocab % blocks:
            return x.matmul(embeddings.T)
        table = embeddings.view(blocks, vocab // blocks, -1)
        out = torch.bmm(x.unsqueeze(0).expand(blocks, -1, -1), table.transpose(1, 2))
        return out.permute(1, 0, 2).reshape(x.shape[0], vocab)

    def _attend(self, q, keys, values, mask, soft_cap, out_kernel, empty=None):
        """Grouped-query attention of `q` (b, t, heads, dim) over `keys` and `values`, through the output projection.

        `empty` (Gemma 3n): `(queries that see no key (b, t), what they get instead (b, kv heads, dim))`.
        """
        torch = self.torch
        b, t, heads, dim = q.shape
        kv, length = keys.shape[2], keys.shape[1]
        groups = heads // kv
        # Each KV head's query heads and positions as the rows of one product (plain matmuls: at one
        # query position einsum's planning cost more than its arithmetic).
        rows = q.reshape(b, t, kv, groups, dim).permute(0, 2, 3, 1, 4).reshape(b, kv, groups * t, dim)
        scores = rows.matmul(keys.permute(0, 2, 3, 1)).view(b, kv, groups, t, length)
        if soft_cap is not None:
            scores = torch.tanh(scores / soft_cap) * soft_cap
        scores = scores.float().masked_fill(~mask[:, None, None], -1e9)
        probs = torch.softmax(scores, dim=-1).to(values.dtype).view(b, kv, groups * t, length)
        out = probs.matmul(values.permute(0, 2, 1, 3)).view(b, kv, groups, t, -1)
        out = out.permute(0, 3, 1, 2, 4).reshape(b, t, heads, values.shape[-1])
        if empty is None:
            # As KerasHub: a query that may see no key (a padding position) gets zeros, not an average.
            out = out.masked_fill(~mask.any(dim=-1)[:, :, None, None], 0)
        else:
            none_seen, fill = empty
            fill = (
                fill[:, None, :, None, :]
                .expand(b, 1, kv, heads // kv, fill.shape[-1])
                .reshape(b, 1, heads, -1)
            )
            out = torch.where(none_seen[:, :, None, None], fill, out)
        if isinstance(out_kernel, PackedLinear):
            return out_kernel(out.reshape(b, t, -1))
        attn = out.permute(2, 0, 1, 3).reshape(heads, b * t, -1).matmul(out_kernel).sum(0)
        return attn.reshape(b, t, -1)

    def _mlp(self, h, blk, products: _Products = _KERAS_KERNELS):
        if products.gate_up is not None:
            gate, up = products.gate_up(h).chunk(2, dim=-1)
        else:
            gate = self._dense(h, blk.gating_ffw, products.gate)
            up = self._dense(h, blk.gating_ffw_2, products.up)
        gate = self.torch.nn.functional.gelu(gate, approximate="tanh")
        return self._dense(gate * up, blk.ffw_linear, products.down)

    @staticmethod
    def _dense(x, layer, packed=None):
        """`x @ kernel` for a Dense layer, or by its packed weight."""
        return x.matmul(layer.kernel.value) if packed is None else packed(x)

    def _qkv(self, h, att, products: _Products):
        """Gemma 1-3's query, key and value heads of `h`: packed as one product when they are."""
        heads = (att.num_query_heads, att.num_key_value_heads, att.num_key_value_heads)
        if products.qkv is None:
            layers = (att.query_dense, att.key_dense, att.value_dense)
            packed = (products.query, products.key, products.value)
            return [self._heads_of(h, *each) for each in zip(layers, heads, packed, strict=True)]
        y = products.qkv(h)
        dim = y.shape[-1] // sum(heads)
        parts = y.split([n * dim for n in heads], dim=-1)
        return [p.reshape(*p.shape[:-1], n, dim) for p, n in zip(parts, heads, strict=True)]

    def _heads_of(self, x, layer, heads: int, packed=None):
        """An EinsumDense (heads, hidden, dim) projection of `x`, or by its packed weight: `(b, t, heads, dim)`."""
        if packed is None:
            return self._heads_in(x, layer.kernel.value)
        y = packed(x)
        return y.reshape(*y.shape[:-1], heads, -1)

    def _scalar(self, value: float, dtype):
        # A Python number cast to the activations' dtype first, as `ops.cast(value, dtype)` in KerasHub.
        key = (float(value), dtype)
        if key not in self._scalars:
            torch = self.torch
            self._scalars[key] = torch.tensor(value, dtype=torch.float32, device=self.device).to(dtype)
        return self._scalars[key]

    def _forward(
        self, token_ids, padding_mask, cache, index: int, every_position: bool = False, states: bool = False
    ):
        torch = self.torch
        backbone = self.backbone
        embeddings = self._table.value
        self._angles = {}
        b, t = token_ids.shape
        packing = bool(self.packed) and b * t <= PACKED_MAX_ROWS
        token_ids = token_ids.long()
        device = self.device
        end = index + t  # keys past the last written position are masked anyway
        positions = torch.arange(index, end, dtype=torch.float32, device=device)
        query_pos = torch.arange(index, end, device=device)
        key_pos = torch.arange(end, device=device)
        visible = (padding_mask[:, None, :end] > 0) & (key_pos[None, None, :] <= query_pos[None, :, None])
        distance = query_pos[:, None] - key_pos[None, :]
        if self.gemma3n:
            x = self._gemma3n_layers(token_ids, cache, index, positions, visible, distance, every_position)
        elif self.gemma4:
            x = self._embed(embeddings, token_ids)
            x = self._gemma4_layers(x, token_ids, cache, index, positions, visible, distance)
            x = self._rms4(x if every_position else x[:, -1:, :], backbone.layer_norm)
        else:
            x = self._embed(embeddings, token_ids)
            x = self._layers(x, cache, index, positions, visible, distance, packing)
            x = self._rms(x if every_position else x[:, -1:, :], backbone.layer_norm)
        flat = x.reshape(-1, x.shape[-1])
        # A prefill's last position too: packed, its product reads 4-bit blocks, not the float32 table.
        output = self.packed_output if self.packed and flat.shape[0] <= PACKED_MAX_ROWS else None
        logits = (self._logits(flat, embeddings) if output is None else output(flat)).float()
        if self.final_cap is not None:
            logits = torch.tanh(logits / self.final_cap) * self.final_cap
        if states:
            return (logits.reshape(b, t, -1), x), cache
        return (logits.reshape(b, t, -1) if every_position else logits), cache

    def _embed(self, embeddings, token_ids):
        x = embeddings[token_ids]
        return x * self._scalar(math.sqrt(self.hidden), x.dtype)

    def _layers(self, x, cache, index, positions, visible, distance, packing: bool):
        """Gemma 1-3's decoder blocks; writes each layer's keys and values into `cache`.

        With `packing`, the products go through each layer's packed weights where it has them.
        """
        end = index + x.shape[1]
        masks = {}
        for spec, (key_cache, value_cache) in zip(self.blocks, cache, strict=True):
            blk = spec.block
            att = blk.attention
            products = spec.packed if packing else _KERAS_KERNELS
            h = self._rms(x, blk.pre_attention_norm)
            q, k, v = self._qkv(h, att, products)
            if spec.qk_norm:
                q = self._rms(q, att.query_norm)
                k = self._rms(k, att.key_norm)
            q = self._rope(q, positions, spec.inv_freq)
            k = self._rope(k, positions, spec.inv_freq)
            key_cache[:, index:end] = k
            value_cache[:, index:end] = v
            # A sliding layer's queries see no key before `index - window + 1`: those columns are skipped.
            lo = 0 if spec.window is None else max(0, index - spec.window + 1)
            keys, values = key_cache[:, lo:end], value_cache[:, lo:end]
            q = q * self._scalar(spec.scale, q.dtype)
            if spec.window not in masks:
                masks[spec.window] = (
                    visible
                    if spec.window is None
                    else visible[:, :, lo:] & (distance[:, lo:].abs() < spec.window)[None]
                )
            mask = masks[spec.window]
            out_kernel = products.out or att.output_dense.kernel.value
            attn = self._attend(q, keys, values, mask, spec.soft_cap, out_kernel)
            if spec.post_norms:
                attn = self._rms(attn, blk.post_attention_norm)
            x = x + attn
            h = self._rms(x, blk.pre_ffw_norm)
            ff = self._mlp(h, blk, products)
            if spec.post_norms:
                ff = self._rms(ff, blk.post_ffw_norm)
            x = x + ff
        return x

    def _gemma4_layers(self, x, token_ids, cache, index, positions, visible, distance):
        """Gemma 4's decoder blocks, as `Gemma4CausalLM.call_with_cache` runs them (text only).

        A KV-shared layer writes nothing: it reads the cache its source
        layer (an earlier one) has just written in this same call.
        """
        torch = self.torch
        gelu = torch.nn.functional.gelu
        backbone = self.backbone
        dtype = x.dtype
        end = index + x.shape[1]
        per_layer = backbone.hidden_size_per_layer_input
        if per_layer:
            table = backbone.per_layer_token_embedding.embeddings.value[token_ids].to(dtype)
            table = table * self._scalar(per_layer**0.5, dtype)
            projected = x.matmul(backbone.per_layer_model_projection.kernel.value)
            projected = projected * self._scalar(self.hidden**-0.5, dtype)
            root_half = self._scalar(2.0**-0.5, dtype)
        for i, spec in enumerate(self.blocks):
            blk = spec.block
            att = blk.attention
            if dtype == torch.float16:
                x = x.clamp(-65504, 65504)
            h = self._rms4(x, blk.pre_attention_norm)
            q = self._rms4(self._heads_in(h, att.query_dense.kernel.value), att.query_norm)
            q = self._rope(q, positions, spec.inv_freq)
            key_cache, value_cache = cache[spec.slot]
            if not blk.is_kv_shared_layer:
                k = self._heads_in(h, att.key_dense.kernel.value)
                key_cache[:, index:end] = self._rope(self._rms4(k, att.key_norm), positions, spec.inv_freq)
                # Global layers with `attention_k_eq_v` have no value projection: values are the raw keys.
                v = k if att.value_dense is None else self._heads_in(h, att.value_dense.kernel.value)
                value_cache[:, index:end] = self._rms4(v, att.value_norm)
            # No 1/sqrt(dim) scale: Gemma 4's query and key norms stand in for it.
            mask = visible if spec.window is None else visible & (distance.abs() < spec.window)[None]
            keys, values = key_cache[:, :end], value_cache[:, :end]
            attn = self._attend(q, keys, values, mask, spec.soft_cap, att.output_dense.kernel.value)
            x = self._residual(x, self._rms4(attn, blk.post_attention_norm))
            ff = self._mlp(self._rms4(x, blk.pre_ffw_norm), blk)
            if blk.enable_moe_block:
                # The dense MLP and the experts side by side, each with its own post-norm, then summed.
                experts = self._rms4(self._experts(x, blk), blk.post_ffw_norm_moe_path)
                ff = self._rms4(ff, blk.post_ffw_norm_dense) + experts
            x = self._residual(x, self._rms4(ff, blk.post_ffw_norm))
            if per_layer:
                part = slice(i * per_layer, (i + 1) * per_layer)
                layer_input = self._rms4(projected[:, :, part], backbone.per_layer_projection_norm)
                layer_input = (layer_input + table[:, :, part]) * root_half
                gated = gelu(x.matmul(blk.per_layer_input_gate.kernel.value), approximate="tanh")
                gated = (gated * layer_input).matmul(blk.per_layer_up_proj.kernel.value)
                x = x + self._rms4(gated, blk.post_per_layer_input_norm)
            x = x * blk.layer_scalar.value.to(dtype)
        return x

    def _gemma3n_layers(self, token_ids, cache, index, positions, visible, distance, every_position):
        """Gemma 3n's text model, as `KerasRunner._hidden_altup` runs KerasHub's layers: the final-normed output
        after every fed token, or (not `every_position`) after the last only.

        Four AltUp streams pass through each block, which predicts all of
        them from the active one, runs attention, LAuReL and the MLP on that
        prediction, corrects all four by the innovation, and adds the gated
        per-layer input to all but the first. A KV-shared layer writes
        nothing and reads its source's cache, written earlier in this call.
        """
        torch = self.torch
        gelu = torch.nn.functional.gelu
        text = self.text
        rms = self._rms3n
        b, t = token_ids.shape
        end = index + t
        x = self._table.value[token_ids]
        dtype = x.dtype
        x = x * self._scalar(text.embed_tokens.embed_scale, dtype)
        # Per-layer inputs, as KerasHub's embedding processor computes them (text only).
        layers, width = text.num_hidden_layers, text.hidden_size_per_layer_input
        known = (token_ids >= 0) & (token_ids < text.vocab_size_per_layer_input)
        table = text.embed_tokens_per_layer.embedding.embeddings.value[torch.where(known, token_ids, 0)]
        table = (table * self._scalar(text.embed_tokens_per_layer.embed_scale, dtype)).reshape(
            b, t, layers, width
        )
        projected = x.matmul(text.per_layer_model_projection.kernel.value) * text.per_layer_projection_scale
        projected = rms(projected.reshape(b, t, layers, width), text.per_layer_projection_norm)
        per_layer = (projected + table) * text.per_layer_input_scale

        def rescaled(streams, like):
            """Each AltUp stream scaled to the magnitude of `like` (KerasHub's epsilon)."""
            target = like.square().mean(dim=-1, keepdim=True).sqrt()
            return [
                s * target / s.square().mean(dim=-1, keepdim=True).clamp_min(1e-5).sqrt() for s in streams
            ]

        streams = [x, *rescaled([x.matmul(p.kernel.value) for p in text.altup_projections], x)]
        xs = torch.stack(streams)  # (streams, b, t, hidden)
        # Masks per window, and (as KerasHub's softmax over a fully masked row gives) a query that sees
        # no key gets the average of every value in the cache; found once here, not once per layer.
        masks = {}
        for window in {spec.window for spec in self.blocks}:
            mask = visible if window is None else visible & (distance.abs() < window)[None]
            none_seen = ~mask.any(dim=-1)
            masks[window] = (mask, none_seen if bool(none_seen.any()) else None)
        for i, spec in enumerate(self.blocks):
            blk = spec.block
            altup, att = blk.altup, blk.attention
            n, active = altup.altup_num_inputs, altup.altup_active_idx
            coefs = self._modalities(xs[active], altup).matmul(altup.prediction_coefs.kernel.value)
            coefs = coefs.reshape(b, t, n, n)  # stream i's prediction: itself + sum_j coefs[i, j] * stream j
            predictions = torch.einsum("btij,jbtd->ibtd", coefs, xs) + xs
            guess = predictions[active]
            normed = rms(guess, blk.input_layernorm)
            laurel = normed.matmul(blk.laurel.linear_left.kernel.value).matmul(
                blk.laurel.linear_right.kernel.value
            )
            laurel = normed + rms(laurel, blk.laurel.post_laurel_norm)
            q = self._rope(
                rms(self._heads(normed, att.q_proj, att.num_attention_heads), att.q_norm),
                positions,
                spec.inv_freq,
            )
            key_cache, value_cache = cache[spec.slot]
            if not spec.shared:
                k = rms(self._heads(normed, att.k_proj, att.num_key_value_heads), att.k_norm)
                key_cache[:, index:end] = self._rope(k, positions, spec.inv_freq)
                value_cache[:, index:end] = rms(
                    self._heads(normed, att.v_proj, att.num_key_value_heads), att.v_norm
                )
            mask, none_seen = masks[spec.window]
            empty = None if none_seen is None else (none_seen, value_cache.mean(dim=1))
            out_kernel = att.o_proj.kernel.value.view(att.num_attention_heads, att.head_dim, -1)
            # No 1/sqrt(dim) scale and no soft cap: Gemma 3n's query and key norms stand in for them.
            attn = self._attend(q, key_cache[:, :end], value_cache[:, :end], mask, None, out_kernel, empty)
            attn = rms(attn, blk.post_attention_layernorm)
            attn_laurel = (guess + attn + laurel) / math.sqrt(2)
            ff = self._mlp3n(rms(attn_laurel, blk.pre_feedforward_layernorm), blk.mlp, spec.cutoff)
            activated = attn_laurel + rms(ff, blk.post_feedforward_layernorm)
            # AltUp's correction: every stream moves by the innovation, each by its own coefficient.
            correction = self._modalities(activated, altup).matmul(altup.correction_coefs.kernel.value) + 1.0
            corrected = (activated - guess)[None] * correction.permute(2, 0, 1)[..., None] + predictions
            first = corrected[active]
            if altup.altup_correct_scale:
                first = first * altup.correct_output_scale.value.to(dtype)
            gated = gelu(first.matmul(blk.per_layer_input_gate.kernel.value), approximate="tanh")
            gated = (gated * per_layer[:, :, i]).matmul(blk.per_layer_projection.kernel.value)
            gated = rms(gated, blk.post_per_layer_input_norm)
            xs = torch.cat([corrected[:1], corrected[1:] + gated[None]])
        if not every_position:
            xs = xs[:, :, -1:, :]  # only the last position's logits are wanted
        out = [
            xs[0],
            *rescaled(
                [xs[j + 1].matmul(p.kernel.value) for j, p in enumerate(text.altup_unembed_projections)],
                xs[0],
            ),
        ]
        return rms(torch.stack(out).mean(dim=0), text.final_normalization)

    @staticmethod
    def _heads(x, dense, heads):
        """A Dense projection (hidden, heads * dim) split into heads: (b, t, heads, dim)."""
        return x.matmul(dense.kernel.value).reshape(*x.shape[:-1], heads, -1)

    def _modalities(self, x, altup):
        """AltUp's router: tanh of the routed, normalized and scaled stream (tanh in float32)."""
        routed = (self._rms3n(x, altup.router_norm) * altup.router_input_scale).matmul(
            altup.modality_router.kernel.value
        )
        return self.torch.tanh(routed.float()).to(x.dtype)

    def _mlp3n(self, h, mlp, cutoff):
        """Gemma 3n's MLP in float32; with activation sparsity, only the gate values `cutoff` standard
        deviations above their mean pass (KerasHub's gaussian top-k)."""
        torch = self.torch
        gate = h.matmul(mlp.gate_proj.kernel.value).float()
        if cutoff is not None:
            mean = gate.mean(dim=-1, keepdim=True)
            std = gate.std(dim=-1, keepdim=True, correction=0)
            gate = torch.relu(gate - (mean + std * cutoff))
        up = h.matmul(mlp.up_proj.kernel.value).float()
        gated = torch.nn.functional.gelu(gate, approximate="tanh") * up
        return gated.to(h.dtype).matmul(mlp.down_proj.kernel.value)

    def _residual(self, x, y):
        if x.dtype == self.torch.float16:  # as KerasHub: summed in float32, clipped to float16's range
            return (x.float() + y.float()).clamp(-65504, 65504).half()
        return x + y

    def _experts(self, x, blk):
        """Gemma 4's mixture of experts over `x`, which the router and the experts each normalize their own way.

        KerasHub runs every expert on every token and then zeroes what was
        not picked; here each picked expert runs on the tokens that picked it.
        """
        torch = self.torch
        router, bank = blk.moe_router, blk.moe_expert_bank
        flat = x.reshape(-1, x.shape[-1])
        dtype = flat.dtype
        routed = self._rms4(flat, router.rms_norm) * self._scalar(router._scalar_root_size, dtype)
        routed = routed * router.per_dim_scale.value.to(dtype)
        probs = torch.softmax(routed.matmul(router.proj.kernel.value).float(), dim=-1).to(dtype)
        weights, chosen = probs.topk(router.num_experts_per_token, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-9)
        h = self._rms4(flat, blk.pre_ffw_norm_moe)
        out = torch.zeros_like(h)
        for e in chosen.unique().tolist():
            rows, pick = (chosen == e).nonzero(as_tuple=True)
            y = h[rows]
            gate = torch.nn.functional.gelu(y.matmul(bank.gate_proj.value[e]).float(), approximate="tanh")
            y = (gate.to(dtype) * y.matmul(bank.up_proj.value[e])).matmul(bank.down_proj.value[e])
            y = y * bank.per_expert_scale.value[e].to(dtype)
            out.index_add_(0, rows, y * weights[rows, pick, None])
        return out.reshape(x.shape)
