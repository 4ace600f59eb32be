"""The LoRA fine-tuning loop, the same on JAX, TensorFlow and PyTorch.

`lm.finetune(data, ...)` calls `finetune` here with the model's parts. The loop is ours, around
Keras' compiled `train_on_batch`, because it must resume in the middle of an
epoch at exactly the batch where a killed run stopped; `fit` can only
resume at epoch boundaries. Each step runs Keras' own compiled train step
(`jax.jit`, `tf.function` or eager torch), so the loop adds only a Python
call per batch.

Determinism: the data order of each epoch is drawn from `(seed, epoch)` and
LoRA's `A` from `seed`, so a run resumed from a checkpoint ends with the
same adapters as one that never stopped.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load()  # doctest: +SKIP
>>> result = lm.finetune("train.jsonl", lora_rank=8, epochs=3, out_dir="run/")  # doctest: +SKIP
>>> result.val_perplexity  # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gemma_keras import interrupts
from gemma_keras.architectures.chat_format import TurnFormat
from gemma_keras.backend.devices import capabilities
from gemma_keras.errors import FinetuneError
from gemma_keras.training import lora
from gemma_keras.training.checkpoints import ADAPTERS, Checkpoints, Plan, check_run_directory
from gemma_keras.training.config import FinetuneConfig
from gemma_keras.training.data import DataStats, Example, epoch_order, make_batch, tokenize_records


@dataclass
class FinetuneResult:
    """What a run did: per-step history, validation loss and data statistics."""

    steps: int
    history: list[dict[str, float]]
    train_loss: float
    val_loss: float | None
    val_perplexity: float | None
    tokens_per_second: float
    data: DataStats
    out_dir: str | None = None
    resumed_from: int | None = None
    checkpoints: list[str] = field(default_factory=list)


def _fingerprint(examples: list[Example]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.ids.tobytes())
        digest.update(example.loss_mask.tobytes())
    return digest.hexdigest()[:16]


def _schedule(plan: Plan):
    import keras
    from keras import ops

    lr, warmup, total, decay = plan.learning_rate, plan.warmup_steps, plan.total_steps, plan.decay

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to `lr` over `warmup` steps, then decay to 0 at `total`."""

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = lr * (step + 1.0) / float(max(warmup, 1))
            progress = ops.clip((step - warmup) / float(max(total - warmup, 1)), 0.0, 1.0)
            if decay == "cosine":
                rate = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
            elif decay == "linear":
                rate = lr * (1.0 - progress)
            else:
                rate = ops.convert_to_tensor(lr, "float32")
            return ops.where(step < warmup, warm, rate)

        def get_config(self):
            return asdict(plan)

    return WarmupDecay()


def input_names(backbone) -> set[str]:
    """The names of a functional backbone's inputs (a dict for Gemma 1-4, a list for Gemma 3n)."""
    inputs = backbone.input
    if isinstance(inputs, dict):
        return set(inputs)
    return {tensor.name for tensor in (inputs if isinstance(inputs, (list, tuple)) else [inputs])}


def scored_positions_model(backbone):
    """A Keras model: the next-token loss (negative log-likelihood) at given positions.

    Inputs are `token_ids`, `padding_mask`, `positions` (batch, k) and
    `labels` (batch, k); the output is the loss at each scored position,
    (batch, k). Only those positions go through the vocabulary projection,
    and the loss is `logsumexp(logits) - logits[label]` in one pass: Keras'
    sparse cross-entropy on torch moves the class axis first, which copies
    the (batch, k, 262144) logits twice and costs more than the projection.
    """
    import keras
    from keras import ops

    fused = capabilities().fused_sparse_cross_entropy

    class ScoredPositions(keras.Model):
        def __init__(self, backbone, **kwargs):
            super().__init__(**kwargs)
            self.backbone = backbone
            # Gemma 4 takes positions explicitly; Gemma 3n's text model sits inside its backbone.
            self.positions = "position_ids" in input_names(backbone)
            self.text = getattr(backbone, "language_model", backbone)

        def call(self, inputs):
            features = {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}
            if self.positions:
                shape = ops.shape(inputs["token_ids"])
                features["position_ids"] = ops.broadcast_to(ops.arange(shape[1], dtype="int32")[None], shape)
            hidden = self.backbone(features)
            positions = ops.cast(inputs["positions"], "int32")[:, :, None]
            picked = ops.take_along_axis(hidden, positions, axis=1)
            logits = ops.cast(self.text.token_embedding(picked, reverse=True), "float32")
            labels = ops.cast(inputs["labels"], "int32")
            if fused:
                # TensorFlow's fused op needs less memory than the two-pass form.
                return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            target = ops.take_along_axis(logits, labels[:, :, None], axis=-1)[:, :, 0]
            return ops.logsumexp(logits, axis=-1) - target

    return ScoredPositions(backbone, name="scored_positions")


def _mean_of_outputs():
    import keras

    class MeanOfOutputs(keras.losses.Loss):
        """The model already outputs per-position losses; average them by sample weight."""

        def call(self, y_true, y_pred):
            return y_pred

    return MeanOfOutputs(reduction="mean_with_sample_weight", name="nll")


def _compile(model, plan: Plan) -> None:
    import keras

    optimizer = keras.optimizers.AdamW(
        learning_rate=_schedule(plan),
        weight_decay=plan.weight_decay,
        gradient_accumulation_steps=plan.gradient_accumulation if plan.gradient_accumulation > 1 else None,
    )
    model.compile(optimizer=optimizer, loss=_mean_of_outputs(), weighted_metrics=[])
    optimizer.build(model.trainable_variables)


def _batches(examples: list[Example], plan: Plan, pad_id: int, start_micro: int):
    """Yields `(micro_index, x, y, sample_weight)` from `start_micro` on.

    A short last batch of an epoch is filled with rows of zero weight, so
    every batch has the same number of rows (no recompiles on that account).
    """
    n = len(examples)
    per_epoch = math.ceil(n / plan.batch_size)
    total_micro = plan.total_steps * plan.gradient_accumulation
    order_epoch, order = None, None
    for micro in range(start_micro, total_micro):
        epoch, position = divmod(micro, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(n, plan.seed, epoch)
        rows = [examples[i] for i in order[position * plan.batch_size : (position + 1) * plan.batch_size]]
        real = len(rows)
        rows += [rows[0]] * (plan.batch_size - real)
        x, y, weight = make_batch(rows, plan.sequence_length, pad_id)
        weight[real:] = 0.0
        yield micro, x, y, weight


def _to_float(value) -> float:
    from keras import ops

    return float(np.asarray(ops.convert_to_numpy(value)))


def evaluate(
    model,
    examples: list[Example],
    batch_size: int,
    sequence_length: int,
    pad_id: int,
    between_batches=None,
) -> float:
    """Mean next-token loss over the trained tokens of `examples`; `between_batches()` runs before each."""
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        if between_batches is not None:
            between_batches()
        x, y, weight = make_batch(examples[start : start + batch_size], sequence_length, pad_id)
        model.reset_metrics()
        logs = model.test_on_batch(x, y, sample_weight=weight, return_dict=True)
        tokens = float(weight.sum())
        total += _to_float(logs["loss"]) * tokens
        count += tokens
    return total / max(count, 1.0)


def finetune(
    backbone, tokenizer, data: Any, config: FinetuneConfig, chat_format: TurnFormat
) -> FinetuneResult:
    """LoRA fine-tuning of `backbone` in place; see `FinetuneConfig` for the settings.

    Args:
        backbone: a KerasHub Gemma backbone; LoRA factors are added to it.
        tokenizer: its `GemmaTokenizer`.
        data: a JSONL path, a list of dicts, or a `datasets.Dataset`.
        config: a `FinetuneConfig`.
        chat_format: how `{messages}` and `{prompt, response}` records are rendered.

    A runner built over the backbone before this call holds the old variable
    list; build a new one afterwards (`Gemma.finetune` does).

    `config.out_dir` is checked first (`checkpoints.check_run_directory`:
    not a file, writable, no foreign `adapters.npz`), so a bad one raises
    `FinetuneError` before the data is read and before the model changes.
    """
    c = config
    if c.out_dir is not None:
        c = c.replace(out_dir=check_run_directory(c.out_dir))
    quantized = [
        layer.name for layer in backbone._flatten_layers() if getattr(layer, "quantization_mode", None)
    ]
    if quantized:
        raise FinetuneError(
            f"this model is quantized (layer {quantized[0]!r}); fine-tune a float model, then quantize."
        )
    examples, stats = tokenize_records(
        data, tokenizer, c.sequence_length, c.mask_prompt, c.on_error, chat_format=chat_format
    )
    val_examples = None
    if c.validation_data is not None:
        val_examples, _ = tokenize_records(
            c.validation_data,
            tokenizer,
            c.sequence_length,
            c.mask_prompt,
            c.on_error,
            chat_format=chat_format,
        )

    per_epoch = math.ceil(len(examples) / c.batch_size)
    total_steps = c.max_steps or max(1, c.epochs * per_epoch // c.gradient_accumulation)
    warmup_steps = total_steps // 20 if c.warmup_steps is None else int(c.warmup_steps)

    settings = lora.enable_lora(backbone, c.lora_rank, c.lora_alpha, c.targets, c.seed)
    plan = Plan(
        lora_rank=settings["rank"],
        lora_alpha=settings["alpha"],
        targets=settings["targets"],
        batch_size=int(c.batch_size),
        gradient_accumulation=int(c.gradient_accumulation),
        learning_rate=float(c.learning_rate),
        warmup_steps=warmup_steps,
        decay=c.decay,
        weight_decay=float(c.weight_decay),
        sequence_length=int(c.sequence_length),
        seed=int(c.seed),
        total_steps=total_steps,
        data_fingerprint=_fingerprint(examples),
    )
    return _train(backbone, tokenizer.pad_id, plan, examples, val_examples, stats, c)


def _interrupted_message(signum: int, step: int, total: int, checkpoint: str | None, during: str) -> str:
    import signal

    what = "fine-tuning" if not during else f"fine-tuning ({during})"
    text = f"{what} stopped by {signal.Signals(signum).name} at step {step} of {total}"
    if checkpoint is None:
        return f"{text}; nothing was saved (no out_dir), and the model holds the adapters trained so far."
    return (
        f"{text}; checkpoint {checkpoint}. To continue, run it again with resume=True "
        "(--resume on the command line) and the same out_dir and settings."
    )


def _train(backbone, pad_id, plan, examples, val_examples, stats, config: FinetuneConfig) -> FinetuneResult:
    import keras

    out_dir = config.out_dir
    model = scored_positions_model(backbone)
    _compile(model, plan)
    total_steps, accumulation = plan.total_steps, plan.gradient_accumulation
    checkpoints = Checkpoints(Path(out_dir)) if out_dir is not None else None
    start_step, history, resumed_from = 0, [], None
    if config.resume:
        restored = checkpoints.restore(model, plan)
        if restored is not None:
            start_step, history = restored
            resumed_from = start_step
    checkpoint_every = config.checkpoint_every
    if checkpoint_every is None and checkpoints is not None:
        checkpoint_every = max(1, min(100, total_steps // 10 or 1))

    verbose = config.verbose
    progress = keras.utils.Progbar(total_steps, stateful_metrics=["loss", "tok/s", "lr"]) if verbose else None
    if progress is not None and start_step:
        progress.update(start_step)
    saved: list[str] = []
    step_losses: list[float] = []
    step_weights: list[float] = []
    tokens_done = 0
    train_seconds = 0.0
    step = start_step
    started = time.perf_counter()

    def stop_if_asked(during: str = "") -> None:
        """The safe point: on SIGINT/SIGTERM, checkpoint this step (once) and raise `Interrupted`."""
        if interrupts.requested() is None:
            return
        checkpoint = None
        if checkpoints is not None and step > 0:
            checkpoint = str(checkpoints.path(step))
            if not saved or saved[-1] != checkpoint:  # not written yet in this run
                saved.append(str(checkpoints.save(model, plan, step, history)))
        interrupts.check(
            lambda signum: _interrupted_message(signum, step, total_steps, checkpoint, during),
            step=step,
            total_steps=total_steps,
            out_dir=str(out_dir) if out_dir is not None else None,
            checkpoint=checkpoint,
        )

    # Signals only record a stop request in here; it is honoured after a whole step.
    with interrupts.deferred():
        for micro, x, y, weight in _batches(examples, plan, pad_id, start_step * accumulation):
            model.reset_metrics()
            logs = model.train_on_batch(x, y, sample_weight=weight, return_dict=True)
            trained = float(weight.sum())
            step_losses.append(_to_float(logs["loss"]) * trained)
            step_weights.append(trained)
            tokens_done += int(x["padding_mask"][weight.sum(axis=1) > 0].sum())
            if (micro + 1) % accumulation:
                continue
            step += 1
            train_seconds = time.perf_counter() - started
            loss = sum(step_losses) / max(sum(step_weights), 1.0)
            step_losses, step_weights = [], []
            rate = _to_float(model.optimizer.learning_rate)
            history.append({"step": step, "loss": loss, "learning_rate": rate, "seconds": train_seconds})
            if progress is not None:
                progress.update(step, [("loss", loss), ("tok/s", tokens_done / train_seconds), ("lr", rate)])
            if checkpoints is not None and (step % checkpoint_every == 0 or step == total_steps):
                saved.append(str(checkpoints.save(model, plan, step, history)))
            stop_if_asked()
            if config.stop_after is not None and step >= config.stop_after:
                break  # asked to stop early; resume=True continues on the same schedule

        val_loss = val_perplexity = None
        if val_examples is not None:
            val_loss = evaluate(
                model,
                val_examples,
                plan.batch_size,
                plan.sequence_length,
                pad_id,
                between_batches=lambda: stop_if_asked("validation"),
            )
            val_perplexity = math.exp(min(val_loss, 50))
            if verbose:
                print(f"validation loss {val_loss:.4f}, perplexity {val_perplexity:.3f}", file=sys.stderr)
    if out_dir is not None and step == total_steps:
        lora.save_adapters(backbone, Path(out_dir) / ADAPTERS)
    per_epoch = math.ceil(len(examples) / plan.batch_size)
    recent = [h["loss"] for h in history[-max(1, per_epoch // accumulation) :]]
    return FinetuneResult(
        steps=step,
        history=history,
        train_loss=float(np.mean(recent)) if recent else float("nan"),
        val_loss=val_loss,
        val_perplexity=val_perplexity,
        tokens_per_second=tokens_done / train_seconds if train_seconds else 0.0,
        data=stats,
        out_dir=str(out_dir) if out_dir is not None else None,
        resumed_from=resumed_from,
        checkpoints=[p for p in saved if Path(p).exists()],
    )
