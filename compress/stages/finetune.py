"""finetune: turn a pretrained encoder into a classifier (or tagger) for the recipe's labels."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.core.artifact import Artifact
from compress.core.models import is_classifier_for, load_classifier, save_checkpoint
from compress.core.stage import Context, StageResult, register
from compress.core.train import TrainingConfig, train


class FinetuneConfig(TrainingConfig):
    type: Literal["finetune"] = "finetune"
    force: bool = Field(False, description="Fine-tune even when the input already classifies these labels.")


@register(FinetuneConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint")
def finetune(cfg: FinetuneConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoTokenizer

    labels = ctx.data.labels
    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    model = load_classifier(parent.path, labels, ctx.allow_pickle, ctx.task)
    if not cfg.force and is_classifier_for(parent.path, labels, ctx.task):
        ctx.log.info("%s: input already classifies %s; kept as is (force: true to train anyway)", cfg.name, labels)
        save_checkpoint(model, tokenizer, out)
        return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {"skipped": "already fine-tuned"})
    start = time.perf_counter()
    result = train(model, tokenizer, cfg, ctx, cfg.name)
    save_checkpoint(model, tokenizer, out)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"},
                       {**result, "train_seconds": round(time.perf_counter() - start, 1)})
