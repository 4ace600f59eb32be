"""One LoRA training step on a fixed batch: shared by the in-process and multi-process tests.

Everything random is drawn from numpy with fixed seeds, so a run on one
device and a run on a mesh start from the same weights and see the same
batch; only the placement differs.
"""

from __future__ import annotations

import numpy as np

RANK = 4
BATCH = 8
LENGTH = 16


def fixed_batch(vocabulary_size: int, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """`(x, y, sample_weight)`: random token ids with ragged right padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocabulary_size, size=(BATCH, LENGTH + 1), dtype=np.int32)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=BATCH)
    mask = (np.arange(LENGTH + 1)[None, :] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype(np.float32)


def lora_variables(backbone) -> list:
    return [v for v in backbone.trainable_weights if "lora_kernel" in v.path]


def enable_lora(lm, seed: int = 1) -> list:
    """Turns LoRA on and gives the factors fixed values; returns them."""
    lm.backbone.enable_lora(rank=RANK)
    return fix_lora_values(lora_variables(lm.backbone), seed)


def fix_lora_values(variables: list, seed: int = 1) -> list:
    """Non-zero values for both factors (B starts at zero otherwise, leaving A untrained)."""
    rng = np.random.default_rng(seed)
    for v in variables:
        v.assign(rng.normal(0.0, 0.05, size=tuple(v.shape)).astype(np.float32))
    return variables


def train_step(lm, x, y, sample_weight) -> tuple[float, dict[str, np.ndarray]]:
    """Compiles with SGD, runs `train_on_batch`; returns the loss and the LoRA weights.

    SGD rather than Adam: Adam's first step is about `lr * sign(gradient)`,
    so a gradient within rounding of zero could flip a weight by 2 * lr.
    """
    import keras

    causal_lm = lm.causal_lm
    causal_lm.preprocessor = None  # the batch is already token ids
    causal_lm.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    loss = causal_lm.train_on_batch(x, y, sample_weight=sample_weight)
    weights = {v.path: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in lora_variables(lm.backbone)}
    return float(np.asarray(loss).reshape(-1)[0]), weights
