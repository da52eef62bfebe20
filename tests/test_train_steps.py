"""How many optimizer steps training takes: `epochs`, raised to `min_steps` on small data, cut at `max_steps` on
large data (the last epoch short, and still evaluated)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from compress.core.data import DataConfig
from compress.core.models import load_classifier
from compress.core.stage import Context
from compress.core.train import TrainingSettings, train


def test_training_stops_at_max_steps_and_evaluates_the_epoch_it_cut_short(tmp_path, tiny_bert, tiny_csv):
    ctx = Context(tmp_path, logging.getLogger("test"), DataConfig(source=str(tiny_csv), max_length=16,
                                                                  split={"group_column": "movie"}))
    per_epoch = math.ceil(len(ctx.data.train) / 16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for settings, steps, epochs in [({"epochs": 3, "max_steps": per_epoch + 4}, per_epoch + 4, 2),
                                    ({"epochs": 1, "min_steps": per_epoch + 1}, 2 * per_epoch, 2),
                                    ({"epochs": 1, "min_steps": per_epoch + 1, "max_steps": per_epoch + 2},
                                     per_epoch + 2, 2)]:
        model = load_classifier(tiny_bert, ctx.data.labels, False, ctx.task)
        result = train(model, tokenizer, TrainingSettings(batch_size=16, **settings), ctx, "t")
        assert (result["optimizer_steps"], len(result["history"])) == (steps, epochs), settings


def test_max_steps_below_min_steps_is_refused():
    with pytest.raises(ValidationError, match="max_steps 10 is below min_steps 20"):
        TrainingSettings(min_steps=20, max_steps=10)


def test_keep_names_the_epoch_whose_weights_training_ends_with(tmp_path, tiny_bert, tiny_csv):
    from compress.core.evaluate import evaluate
    from runtimes.torch_runtime import TorchRuntime

    ctx = Context(tmp_path, logging.getLogger("test"), DataConfig(source=str(tiny_csv), max_length=16,
                                                                  split={"group_column": "movie"}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for keep in ("best", "last"):
        model = load_classifier(tiny_bert, ctx.data.labels, False, ctx.task)

        def flip_the_head_before_the_last_step(step: int, total: int) -> None:
            """The last epoch ends with its two classes swapped: worse on dev than the one before."""
            if step == total - 1:
                with torch.no_grad():
                    model.classifier.weight.neg_(), model.classifier.bias.neg_()

        result = train(model, tokenizer, TrainingSettings(epochs=3, batch_size=16, learning_rate=3e-3, keep=keep),
                       ctx, "t", on_step=flip_the_head_before_the_last_step)
        scores = [h["dev_score"] for h in result["history"]]
        assert scores[-1] < max(scores)
        kept = scores.index(max(scores)) + 1 if keep == "best" else len(scores)
        assert (result["kept_epoch"], result["dev_score"], result["best_dev_score"]) == (kept, scores[kept - 1],
                                                                                         max(scores))
        now = evaluate(TorchRuntime(model).run, tokenizer, ctx.data.dev, ctx.data.labels, 16, 64)["score"]
        assert now == pytest.approx(result["dev_score"])  # the weights it returned are that epoch's


def test_a_search_refuses_to_keep_its_trainings_best_epoch_on_dev():
    from compress.stages.search import SearchConfig

    assert SearchConfig(name="s", distillation={"epochs": 2}).distillation.keep == "last"
    with pytest.raises(ValidationError, match="a search's trainings keep their last epoch"):
        SearchConfig(name="s", distillation={"keep": "best"})
