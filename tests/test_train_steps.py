"""How many optimizer steps training takes: `epochs`, raised to `min_steps` on small data, cut at `max_steps` on
large data (the last epoch short, and still evaluated)."""
from __future__ import annotations

import logging
import math

import pytest
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
