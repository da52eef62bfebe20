"""finetune: turn a pretrained encoder into a classifier (or tagger) for the recipe's labels."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.core.artifact import Artifact
from compress.core.errors import StageFailed
from compress.core.models import is_classifier_for, load_classifier, save_checkpoint
from compress.core.stage import Context, StageResult, register
from compress.core.train import TrainingConfig, train


# A fixed epoch count gives small data too few optimizer steps to learn anything; the default recipe's 550 steps on
# Rotten Tomatoes are above this floor, so it leaves them as they are.
MIN_STEPS = 500


class FinetuneConfig(TrainingConfig):
    type: Literal["finetune"] = "finetune"
    force: bool = Field(False, description="Fine-tune even when the input already classifies these labels.")
    min_steps: int = Field(MIN_STEPS, ge=0, description="At least this many optimizer steps (more epochs on small "
                           "data); 0: exactly `epochs`.")


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
    if result["dev_at_chance"] and not ctx.allow_chance:
        raise StageFailed(f"{cfg.name}: the fine-tuned model is at chance on dev: {result['dev_at_chance']}, after "
                          f"{result['optimizer_steps']} optimizer steps; the run stops here, since nothing made from it "
                          f"could be judged. Try more steps (min_steps, epochs), another learning_rate (now "
                          f"{cfg.learning_rate:g}), or check the labels (data.label_column, the tags); if a model at "
                          f"chance is expected, set gate.allow_chance_baseline: true")
    if result["dev_at_chance"]:
        ctx.log.warning("%s: at chance on dev (%s); gate.allow_chance_baseline lets the run go on", cfg.name,
                        result["dev_at_chance"])
    save_checkpoint(model, tokenizer, out)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"},
                       {**result, "train_seconds": round(time.perf_counter() - start, 1)})
