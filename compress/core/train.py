"""The training loop shared by the training stages: finetune, distill, qat and prune's recovery rounds.

AdamW with linear warm-up and decay, evaluation on dev after every epoch, the best
epoch's weights kept, early stopping. It runs under Hugging Face Accelerate so the same
loop works on one CPU, several GPUs or several nodes (`accelerate launch`).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from compress.core.config import StepConfig, Strict
from compress.core.errors import CompressError
from compress.core.evaluate import at_chance, evaluate
from compress.core.models import logits_of
from compress.core.progress import progress
from compress.core.stage import Context
from compress.core.task import IGNORE, Example, encode, encode_labeled

# loss(model, inputs, labels) -> scalar; distillation swaps in its own.
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


class TrainingSettings(Strict):
    """The optimisation keys every training stage shares (finetune, distill, qat, prune's recovery)."""

    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a dev gain.")
    min_steps: int = Field(0, ge=0, description="At least this many optimizer steps: where `epochs` passes over "
                           "the training split give fewer, more epochs are run (small data needs more passes).")
    max_steps: int | None = Field(None, ge=1, description="At most this many optimizer steps, the last epoch cut "
                                  "short: what a large training split may cost (unset: every epoch in full).")
    keep: Literal["best", "last"] = Field("best", description="Which epoch's weights training ends with: the best "
                                          "on dev, or the last (where dev must stay an unbiased judge afterwards, as "
                                          "in a search: picking the best of several epochs on dev flatters it).")
    group_by_length: bool = Field(False, description="Batch examples of similar token counts together (random "
                                  "order otherwise): far less padding to compute on when lengths vary, as NER "
                                  "sentences do.")


    @model_validator(mode="after")
    def _steps_in_order(self) -> TrainingSettings:
        if self.max_steps is not None and self.max_steps < self.min_steps:
            raise ValueError(f"max_steps {self.max_steps} is below min_steps {self.min_steps}")
        return self


class TrainingConfig(StepConfig, TrainingSettings):
    """A recipe step that trains."""


def process_state():
    """Accelerate's per-process state (rank, world size), made once: under torchrun without a GPU it starts
    CPU DDP over gloo, which it only does when asked for the CPU before anything else creates it."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def token_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(decisions, classes) and (decisions,) for either task: a token head's (B, T, C) logits become (B*T, C),
    so one cross-entropy (IGNORE skips unlabelled positions) serves both."""
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def cross_entropy(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(*token_rows(model(**inputs).logits, labels), ignore_index=IGNORE)


def length_grouped(tokenizer, examples: list[Example], max_length: int, batch_size: int,
                   generator: torch.Generator) -> torch.utils.data.Sampler:
    """Hugging Face Trainer's group_by_length order: random runs of 50 batches, each run sorted by token count."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [int(n) for i in range(0, len(examples), 1024)
               for n in encode(tokenizer, examples[i : i + 1024], max_length)["attention_mask"].sum(1)]
    return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)


class _WithExtra(torch.nn.Module):
    """The model plus modules trained beside it (distillation projections): one unit for AdamW and DDP."""

    def __init__(self, model: torch.nn.Module, extra: torch.nn.Module):
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, **inputs):
        return self.model(**inputs)


def train(model: torch.nn.Module, tokenizer, cfg: TrainingSettings, ctx: Context, name: str,
          loss_fn: LossFn = cross_entropy, train_examples: list[Example] | None = None,
          extra: torch.nn.Module | None = None, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train in place on ctx.data; on return `model` holds the weights of the epoch `cfg.keep` names (the best on
    dev, or the last). Returns the history, the best dev score, the kept epoch and its dev score and, when that
    model is at chance on dev, why (compress.core.evaluate.at_chance).

    `extra` modules are optimised with the model but not kept. `on_step(step, total)` runs before each optimizer
    step (schedules that live in the model, such as gradual layer sharing). `batch_size` is the global batch:
    under DDP each of N processes takes batch_size / N examples, so N processes follow the same trajectory as one.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from transformers import get_linear_schedule_with_warmup

    seed, max_length, data = ctx.seed, ctx.max_length, ctx.data
    torch.manual_seed(seed)
    process_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if cfg.batch_size % accelerator.num_processes:
        raise CompressError(f"{name}.batch_size: {cfg.batch_size} is not divisible by the "
                            f"{accelerator.num_processes} processes")
    examples = train_examples or data.train
    ctx.log.info("%s: training on %s, world size %d", name, accelerator.device, accelerator.num_processes)

    def collate(chunk: list[Example]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        enc, labels = encode_labeled(tokenizer, chunk, max_length)
        return {k: torch.from_numpy(v) for k, v in enc.items()}, torch.from_numpy(labels)

    generator = torch.Generator().manual_seed(seed)
    order = {"sampler": length_grouped(tokenizer, examples, max_length, cfg.batch_size, generator)} \
        if cfg.group_by_length else {"shuffle": True, "generator": generator}
    loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size, collate_fn=collate, **order)
    unit = model if extra is None else _WithExtra(model, extra)
    decay = [p for p in unit.parameters() if p.ndim > 1]
    no_decay = [p for p in unit.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / len(loader)))
    if epochs > cfg.epochs:
        ctx.log.info("%s: %d optimizer steps an epoch; %d epochs instead of %d, to reach min_steps %d", name,
                     len(loader), epochs, cfg.epochs, cfg.min_steps)
    steps = min(epochs * len(loader), cfg.max_steps or math.inf)
    if steps < epochs * len(loader):
        epochs = math.ceil(steps / len(loader))
        ctx.log.info("%s: %d optimizer steps an epoch; stopping at max_steps %d (%d epochs, the last cut short)",
                     name, len(loader), steps, epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    wrapped, optimizer, loader, scheduler = accelerator.prepare(unit, optimizer, loader, scheduler)

    history, best_dev, best_epoch, best_state, since_best, step = [], {"score": -1.0}, 0, None, 0, 0
    for epoch in range(epochs):
        wrapped.train()
        start, losses = time.perf_counter(), []
        for inputs, labels in progress(loader, f"{name} epoch {epoch + 1}/{epochs}"):
            if step == steps:
                break
            if on_step:
                on_step(step, steps)
            step += 1
            loss = loss_fn(wrapped, inputs, labels)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        model.eval()
        dev = evaluate(logits_of(model, str(accelerator.device)), tokenizer, data.dev, data.labels,
                       max_length, ctx.eval_batch_size, desc=f"{name} dev")
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "dev_score": dev["score"],
                        "seconds": round(time.perf_counter() - start, 1)})
        ctx.log.info("%s epoch %d: loss %.4f, dev %s %.4f", name, epoch + 1, history[-1]["train_loss"],
                     dev["metric"], dev["score"])
        if dev["score"] > best_dev["score"]:
            best_dev, best_epoch, since_best = dev, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict()) if cfg.keep == "best" else None
        else:
            since_best += 1
            if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                ctx.log.info("%s: early stop, no dev gain for %d epochs", name, since_best)
                break
    kept, kept_epoch = (best_dev, best_epoch) if cfg.keep == "best" else (dev, len(history))
    if cfg.keep == "best":
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    return {"history": history, "metric": dev["metric"], "best_dev_score": best_dev["score"],
            "dev_score": kept["score"], "kept_epoch": kept_epoch,
            "optimizer_steps": step, "dev_at_chance": at_chance(kept)}
