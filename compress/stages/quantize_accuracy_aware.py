"""Accuracy-aware static INT8: meet a dev-score budget by returning the most sensitive nodes to FP32.

The score is the task's (compress.core.evaluate): accuracy for sequence classification, entity-level F1 for
token classification; the record names it (`metric`) and its keys say `score`, not accuracy.

1. Quantize everything (static QDQ, calibrated once; later attempts reuse the cached ranges).
2. If the dev-score drop exceeds `max_accuracy_drop` (the recipe's key, in points of that score), rank the
   quantized nodes by sensitivity:
   how much closer to the FP32 logits (mean squared error, `sensitivity_examples` dev examples) the model
   gets when only that node is left in FP32 (leave-one-out).
3. Bisect on k, the number of top-ranked nodes kept in FP32, for the smallest k that meets the budget.
An attempt meets the goal when its drop is within budget and it is within the recipe's parity tolerance.
Every attempt is scored on the full dev split; the best one is saved whether or not the goal was met
(met with the fewest FP32 nodes, else the smallest drop), so the stage never ends empty-handed.
neural-compressor 3.10 is not used: it has no ONNX Runtime back end (see README, "Quantization").
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from compress.core.artifact import Artifact
from compress.core.evaluate import evaluate, points_below, predict_logits
from compress.core.parity import logit_agreement
from compress.core.stage import Context
from compress.stages.quantize_methods import StaticConfig, quantize_qdq, quantized_nodes, static_reader, static_source
from runtimes.ort_runtime import OrtRuntime


class AccuracyAwareConfig(StaticConfig):
    method: Literal["accuracy-aware"] = "accuracy-aware"
    max_accuracy_drop: float | None = Field(None, ge=0, description="Points of the dev score (accuracy, or entity "
                                            "F1 for token classification) INT8 may lose vs FP32.")
    sensitivity_examples: int = Field(256, ge=1, description="Dev examples used to rank nodes by sensitivity.")
    max_fp32_nodes: int | None = Field(None, ge=1, description="At most this many nodes go back to FP32.")

    @model_validator(mode="after")
    def _budget_given(self) -> AccuracyAwareConfig:
        if self.max_accuracy_drop is None:
            raise ValueError("method 'accuracy-aware' needs max_accuracy_drop (points of the dev score: accuracy, "
                             "or entity F1 for token classification)")
        return self

    def apply(self, parent: Artifact, ctx: Context, out: Path) -> dict:
        return search(self, parent, ctx, out)

    def judge_parity(self, parity: dict, ctx: Context) -> None:
        """The search always keeps the closest model it found, and its metrics say what it missed."""
        for failure in self.parity.failures(parity, "INT8 vs FP32"):
            ctx.log.warning("%s: %s", self.name, failure)


def quantizable_nodes(path: Path, op_types: list[str]) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in op_types]


def search(cfg: AccuracyAwareConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    """Writes out/model.onnx; returns the search record."""
    from transformers import AutoTokenizer

    work = out / "work"
    source = static_source(cfg, parent, work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "calibration.json"
    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    data, max_length, batch = ctx.data, ctx.max_length, ctx.eval_batch_size

    def dev_score(path: Path) -> dict:
        return evaluate(OrtRuntime(path).run, tokenizer, data.dev, data.labels, max_length, batch,
                        desc=f"{cfg.name} dev")

    def parity_logits(path: Path) -> np.ndarray:
        """Parity's examples, not its first rows: a token model gives a row per token."""
        return predict_logits(OrtRuntime(path).run, tokenizer, data.dev[: cfg.parity.examples], max_length, batch,
                              desc=f"{cfg.name} parity")

    fp32 = dev_score(source)
    fp32_logits = parity_logits(source)
    attempts: list[dict] = []

    def attempt(fp32_nodes: list[str]) -> dict:
        """Quantize with `fp32_nodes` left in FP32; it meets the goal when both the budget and parity hold."""
        path = work / f"fp32-{len(fp32_nodes)}.onnx"
        quantize_qdq(cfg, source, path, cache, None if cache.is_file() else static_reader(cfg, parent, source, ctx),
                     fp32_nodes)
        drop = points_below(fp32["score"], dev_score(path)["score"])
        parity = cfg.parity.failures(logit_agreement(fp32_logits, parity_logits(path)), "INT8 vs FP32")
        record = {"fp32_nodes": list(fp32_nodes), "dev_score_drop_points": drop, "parity_failures": parity,
                  "meets": drop <= cfg.max_accuracy_drop and not parity, "path": path}
        attempts.append(record)
        ctx.log.info("%s: %d nodes in FP32 -> dev %s drop %.2f points (budget %.2f)%s", cfg.name, len(fp32_nodes),
                     fp32["metric"], drop, cfg.max_accuracy_drop, "; " + "; ".join(parity) if parity else "")
        return record

    ranking: list[dict] = []
    if not attempt([])["meets"]:
        ranking = rank_by_sensitivity(cfg, source, work, cache, tokenizer, data.dev[: cfg.sensitivity_examples],
                                      max_length)
        ranked = [r["node"] for r in ranking]
        lo, hi = 0, min(len(ranked), cfg.max_fp32_nodes or len(ranked))
        if attempt(ranked[:hi])["meets"]:
            while hi - lo > 1:  # invariant: lo misses the budget, hi meets it
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if attempt(ranked[:mid])["meets"] else (mid, hi)
    # Met: the fewest FP32 nodes. Missed: parity held if possible, then the smallest drop.
    best = min(attempts, key=lambda a: (0, len(a["fp32_nodes"])) if a["meets"]
               else (1, len(a["parity_failures"]), a["dev_score_drop_points"]))
    shutil.move(best["path"], out / "model.onnx")
    shutil.rmtree(work, ignore_errors=True)
    return {
        **cfg.settings(),
        "max_accuracy_drop": cfg.max_accuracy_drop,
        "budget_met": best["meets"],  # drop within max_accuracy_drop and parity within tolerance
        "fp32_nodes": best["fp32_nodes"],
        "metric": fp32["metric"],  # what the dev score and its drops are
        "dev_score_fp32": fp32["score"],
        "dev_score_drop_points": best["dev_score_drop_points"],
        "quantized_nodes": quantized_nodes(out / "model.onnx"),
        "attempts": [{"fp32_nodes": len(a["fp32_nodes"]), "dev_score_drop_points": a["dev_score_drop_points"],
                      "parity_failures": a["parity_failures"]} for a in attempts],
        "sensitivity": ranking[:20],
    }


def rank_by_sensitivity(cfg: AccuracyAwareConfig, source: Path, work: Path, cache: Path, tokenizer, examples,
                        max_length: int) -> list[dict]:
    """Leave-one-out: the fall in logit MSE vs FP32 when a node alone stays FP32; biggest fall first."""

    def logit_mse(path: Path) -> float:
        got = predict_logits(OrtRuntime(path).run, tokenizer, examples, max_length, 64, desc="sensitivity")
        return float(np.mean((got - reference) ** 2))

    reference = predict_logits(OrtRuntime(source).run, tokenizer, examples, max_length, 64, desc="sensitivity")
    probe = work / "probe.onnx"
    quantize_qdq(cfg, source, probe, cache)
    base = logit_mse(probe)
    ranking = []
    for node in quantizable_nodes(source, cfg.op_types):
        quantize_qdq(cfg, source, probe, cache, fp32_nodes=[node])
        ranking.append({"node": node, "mse_gain": base - logit_mse(probe)})
    return sorted(ranking, key=lambda r: -r["mse_gain"])
