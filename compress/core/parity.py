"""Numeric agreement between two runtimes on real batches: the check every conversion must pass.

Every step that converts a model (export, quantize, qat, tensorrt, ort_mobile, vocab_prune) compares its output
with its input on dev examples and holds the result to one `parity:` section. The flat keys earlier recipes
used (`parity_examples`, `parity_tolerance`, `parity_min_agreement`, `parity_max_logit_diff`,
`min_agreement`) are still read, as aliases.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from compress.core.config import StepConfig, Strict
from compress.core.errors import StageFailed
from compress.core.evaluate import predict_logits
from compress.core.task import Example, RunBatch

OLD_NAMES = {"parity_examples": "examples", "parity_tolerance": "max_logit_diff",
             "parity_max_logit_diff": "max_logit_diff", "parity_min_agreement": "min_agreement",
             "min_agreement": "min_agreement"}


class ParityConfig(Strict):
    examples: int = Field(256, ge=1, description="Dev examples compared.")
    min_agreement: float | None = Field(None, ge=0, le=1, description="Least share of predictions equal to the "
                                        "reference's; unset: unchecked.")
    max_logit_diff: float | None = Field(None, gt=0, description="Largest |logit - reference logit|; unset: unchecked.")

    def failures(self, parity: dict, what: str) -> list[str]:
        """Where `parity` (compare_logits' result) falls outside these limits; `what` names the pair compared."""
        found = []
        if self.min_agreement is not None and parity["prediction_agreement"] < self.min_agreement:
            found.append(f"{what}: predictions agree on {parity['prediction_agreement']:.3f} of {parity['examples']} "
                         f"dev examples < parity.min_agreement {self.min_agreement}")
        if self.max_logit_diff is not None and parity["max_abs_logit_diff"] > self.max_logit_diff:
            found.append(f"{what}: logits differ by up to {parity['max_abs_logit_diff']:.3g} > parity.max_logit_diff "
                         f"{self.max_logit_diff}")
        return found

    def enforce(self, parity: dict, step: str, what: str) -> None:
        """A converted model outside tolerance is a failed stage, not a result."""
        found = self.failures(parity, what)
        if found:
            raise StageFailed(f"{step}: " + "; ".join(found))


class ParityChecked(StepConfig):
    """A step whose output is compared with its input. Subclasses set their own limits in PARITY_DEFAULTS; a
    recipe's `parity:` keys (or the old flat names) override them one by one."""

    PARITY_DEFAULTS: ClassVar[dict[str, Any]] = {}
    parity: ParityConfig = ParityConfig()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Each subclass's `parity` default is its own limits, so --dry-run and hashes see them as defaults."""
        super().__pydantic_init_subclass__(**kwargs)
        cls.model_fields["parity"].default = ParityConfig(**cls.PARITY_DEFAULTS)
        cls.model_rebuild(force=True)

    @model_validator(mode="before")
    @classmethod
    def _parity_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        flat = {old: data.pop(old) for old in OLD_NAMES if old in data}
        if not flat and "parity" not in data:
            return data
        given = data.get("parity", {})
        if isinstance(given, ParityConfig):
            given = given.model_dump(exclude_unset=True)
        if not isinstance(given, dict):
            return data  # pydantic's own error names the field and the value
        twice = sorted(old for old in flat if OLD_NAMES[old] in given)
        if twice:
            raise ValueError(f"{twice} and parity.{OLD_NAMES[twice[0]]} set the same limit; keep the parity: one")
        data["parity"] = {**cls.PARITY_DEFAULTS, **{OLD_NAMES[k]: v for k, v in flat.items()}, **given}
        return data


def compare_logits(reference: RunBatch, candidate: RunBatch, tokenizer, examples: list[Example],
                   max_length: int, batch_size: int = 32) -> dict:
    ref = predict_logits(reference, tokenizer, examples, max_length, batch_size, desc="parity reference")
    got = predict_logits(candidate, tokenizer, examples, max_length, batch_size, desc="parity candidate")
    return logit_agreement(ref, got)


def logit_agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """The figures ParityConfig judges, from two logit arrays over the same examples."""
    return {
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "prediction_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "examples": len(ref),
    }
