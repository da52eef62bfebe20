"""search: the fastest (or smallest) student whose INT8 model keeps the teacher's dev score within a budget.

A candidate is one setting of depth x attention heads x FFN width. It goes through the stages a recipe would
otherwise chain by hand (prune: layers, heads and FFN neurons by importance on the input; distill: from the
teacher; vocab_prune if asked; export; dynamic INT8), each in a folder of its own under this step's, and is judged as it would ship:
its INT8 model's dev score, and its ONNX Runtime latency (batch 1, `sequence_length`) or file size. The step's
output is the chosen candidate's checkpoint (distilled, and vocabulary-pruned when `vocabulary` is set), so
later steps carry on from it: an export and a quantize with the search's settings rebuild the very INT8 model
that was judged. Every candidate's figures go to the manifest, which the report draws as a table and a plot.

Only dev decides: the test split is never read here.
"""
from __future__ import annotations

import itertools
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from benchmarks.latency import measure_latency
from benchmarks.size import architecture_cost, model_bytes
from compress.core.artifact import Artifact, digest
from compress.core.config import Architecture, RecipeShapes, StepConfig, Strict
from compress.core.data import encode
from compress.core.errors import CompressError, StageFailed
from compress.core.evaluate import evaluate, points_below
from compress.core.models import load_classifier, load_tokenizer
from compress.core.stage import STAGES, Context, StageResult, register
from compress.stages.distill import DistillConfig, DistillSettings, default_layer_map
from compress.stages.prune import ImportanceName, PruneConfig, check_prunable
from compress.stages.quantize_methods import DynamicConfig
from compress.stages.vocab_prune import VocabPruneConfig
from export.onnx import ExportConfig
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime

# Candidate folders kept once the search is over: the INT8 model each was judged by (small, and what a user
# would want to re-measure); the chosen one's checkpoint becomes the step's own files.
KEPT = ("int8",)


class SearchSpace(Strict):
    """Candidates are every combination of the three lists."""

    layers: list[int] = Field([3], min_length=1, description="Encoder layers a candidate keeps: the teacher "
                              "layers distillation's default layer map reads, evenly spaced up to the top one "
                              "(ALBERT: applications of its shared layer).")
    heads: list[float] = Field([0.0], min_length=1, description="Fractions of attention heads pruned (the least "
                               "important of the whole encoder, as prune's heads).")
    ffn: list[float] = Field([0.0], min_length=1, description="Fractions of FFN neurons pruned in every layer.")

    @field_validator("layers")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"{v}: every candidate keeps at least one layer")
        return v

    @field_validator("heads", "ffn")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 <= f < 1 for f in v):
            raise ValueError(f"{v}: fractions in [0, 1)")
        return v

    def candidates(self) -> list[Candidate]:
        return [Candidate(*c) for c in itertools.product(sorted(set(self.layers)), sorted(set(self.heads)),
                                                          sorted(set(self.ffn)))]


@dataclass(frozen=True)
class Candidate:
    layers: int
    heads: float
    ffn: float

    @property
    def id(self) -> str:
        """A step-name-safe label: l3-h33-f50 keeps 3 layers, prunes 33% of the heads and 50% of the FFN."""
        return f"l{self.layers}-h{round(100 * self.heads)}-f{round(100 * self.ffn)}"

    def settings(self) -> dict[str, Any]:
        return {"id": self.id, "layers": self.layers, "heads": self.heads, "ffn": self.ffn}

    def kept_layers(self, depth: int) -> list[int]:
        """The input layers kept: those distillation's default layer map pairs the student's layers with."""
        return [t - 1 for t in default_layer_map(self.layers, depth).values()]

    def estimated_cost(self, config, objective: str, sequence_length: int) -> float:
        """Encoder MACs (latency) or encoder weights (size) the candidate should have: the order candidates run
        in, cheapest first, before any is measured. An ALBERT's layers share weights, so its depth costs no size."""
        heads = config.num_attention_heads
        attention = (heads - round(heads * self.heads)) * (config.hidden_size // heads)
        ffn = round(config.intermediate_size * (1 - self.ffn))
        weights = 4 * config.hidden_size * attention + 2 * config.hidden_size * ffn
        if objective == "size":
            return weights * (1 if config.model_type == "albert" else self.layers)
        return self.layers * (sequence_length * weights + 2 * sequence_length**2 * attention)


class SearchConfig(StepConfig):
    type: Literal["search"] = "search"
    teacher: str | None = Field(None, description="Earlier hf-checkpoint step that teaches and sets the budget's "
                                "reference score; default: the input.")
    space: SearchSpace = SearchSpace()
    max_accuracy_drop: float = Field(1.0, ge=0, description="Points of the task's score (accuracy, entity F1) a "
                                     "candidate's INT8 model may lose on dev against the FP32 teacher.")
    objective: Literal["latency", "size"] = Field("latency", description="What the chosen one is best at among "
                                                  "those within budget: p50 latency, or file size.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-time budget: candidates not started once it is "
                                      "spent are reported as not run (one already running finishes).")
    stop_at_first_fit: bool = Field(False, description="Candidates run cheapest first (estimated MACs or weights); "
                                    "stop at the first within budget instead of measuring the rest.")
    importance: ImportanceName = Field("taylor", description="prune's importance for heads and neurons.")
    prune_batches: int = Field(32, ge=1, description="Training batches that importance is scored on.")
    distillation: DistillSettings = Field(DistillSettings(), description="Every candidate's distillation (distill's "
                                     "keys, without student and teacher).")
    vocabulary: VocabPruneConfig | None = Field(None, description="Every candidate's vocab_prune after "
                                                "distillation (vocab_prune's keys); unset: the teacher's vocabulary.")
    quantization: DynamicConfig = Field(DynamicConfig(name="candidate-int8"), description="Every candidate's dynamic "
                                        "INT8 (quantize's dynamic keys).")
    sequence_length: int = Field(128, ge=8, le=512, description="Tokens per example when timing (batch 1, padded).")
    threads: int = Field(1, ge=1, description="ONNX Runtime threads when timing.")

    @model_validator(mode="before")
    @classmethod
    def _sub_steps_are_named(cls, data: Any) -> Any:
        """The candidates' vocab_prune and quantize settings are steps without a name (or method) of their own."""
        for field, own in (("vocabulary", {"name": "candidate-vocab"}),
                           ("quantization", {"name": "candidate-int8", "method": "dynamic"})):
            if isinstance(data, dict) and isinstance(data.get(field), dict):
                data = data | {field: own | data[field]}
        return data

    @model_validator(mode="after")
    def _times_what_it_keeps(self) -> SearchConfig:
        kept = self.vocabulary and self.vocabulary.max_positions
        if kept and kept < self.sequence_length:
            raise ValueError(f"vocabulary.max_positions {kept} is shorter than sequence_length "
                             f"{self.sequence_length}, the length candidates are timed at")
        return self

    def check_shapes(self, shapes: RecipeShapes) -> None:
        if self.vocabulary:
            self.vocabulary.check_shapes(shapes)

    def references(self) -> dict[str, str]:
        return {"teacher": self.teacher} if self.teacher else {}

    def check_architecture(self, given: Architecture) -> None:
        check_prunable(given)
        if self.vocabulary:
            self.vocabulary.check_architecture(given)


def run_stage(step: StepConfig, parent: Artifact, ctx: Context, out: Path) -> Artifact:
    """One registered stage into `out`, as the pipeline runs it, minus the manifest: the search owns the folder."""
    out.mkdir(parents=True)
    result = STAGES[step.type].run(step, parent, ctx, out)
    return Artifact(step.name, result.kind, out, digest(step.model_dump(by_alias=True), parent.hash), parent.name,
                    step.type, result.files, result.metrics)


@contextmanager
def named(ctx: Context, artifact: Artifact) -> Iterator[str]:
    """The name distill finds `artifact` under in ctx.artifacts; the source, not a step, is there only meanwhile."""
    present = artifact.name in ctx.artifacts
    ctx.artifacts.setdefault(artifact.name, artifact)
    try:
        yield artifact.name
    finally:
        if not present:
            del ctx.artifacts[artifact.name]


@contextmanager
def shared_teacher_outputs(ctx: Context) -> Iterator[None]:
    """Every candidate distills from one teacher on the same texts, so the teacher runs once per text for all of
    them (distill's cache_teacher); the outputs are freed when the search ends."""
    ctx.teacher_outputs = {}
    try:
        yield
    finally:
        ctx.teacher_outputs = None


def candidate_steps(cfg: SearchConfig, candidate: Candidate, depth: int, teacher: str) -> list[StepConfig]:
    drop = sorted(set(range(depth)) - set(candidate.kept_layers(depth)))
    name = f"{cfg.name}-{candidate.id}"
    return [
        PruneConfig(name=f"{name}-pruned", importance=cfg.importance, heads=candidate.heads, ffn=candidate.ffn,
                    drop_layers=drop, batches=cfg.prune_batches),
        DistillConfig(name=f"{name}-student", teacher=teacher, **cfg.distillation.model_dump()),
        *([cfg.vocabulary.model_copy(update={"name": f"{name}-vocab"})] if cfg.vocabulary else []),
        ExportConfig(name=f"{name}-onnx", fuse_embeddings=cfg.quantization.embedding_bits == 8),  # 4-bit: Gathers
        cfg.quantization.model_copy(update={"name": f"{name}-int8"}),
    ]


def measure(cfg: SearchConfig, int8: Artifact, ctx: Context) -> dict[str, Any]:
    """The INT8 model as it would ship: dev score, p50 latency at the search's shape, size, MACs."""
    tokenizer = load_tokenizer(int8.path)
    runtime = OrtRuntime(int8.file("model"), threads=cfg.threads, precision="int8")
    dev = evaluate(runtime.run, tokenizer, ctx.data.dev, ctx.data.labels, ctx.max_length, ctx.eval_batch_size,
                   desc=f"{int8.name} dev")
    inputs = encode(tokenizer, ctx.data.dev[:1], cfg.sequence_length, pad_to_max=True)  # a real text, padded
    latency = measure_latency(lambda: runtime.run(inputs), warmup=10, min_repeats=30, max_seconds=8.0,
                              batch_size=1, min_seconds=2.0)
    cost = architecture_cost(int8.path, cfg.sequence_length) or {}
    return {"dev_score": dev["score"], "p50_ms": latency["p50_ms"], "size_bytes": model_bytes(int8),
            "macs": cost.get(f"macs_seq{cfg.sequence_length}")}


def run_candidate(cfg: SearchConfig, candidate: Candidate, parent: Artifact, teacher: str, ctx: Context,
                  folder: Path, depth: int) -> dict[str, Any]:
    start, artifacts = time.perf_counter(), {}
    artifact = parent
    for step in candidate_steps(cfg, candidate, depth, teacher):
        role = step.name.rsplit("-", 1)[1]  # pruned, student, vocab, onnx, int8
        artifact = artifacts[role] = run_stage(step, artifact, ctx, folder / role)
    pruned, student = artifacts["pruned"].metrics, artifacts["student"].metrics
    return {"heads_per_layer": pruned["heads_per_layer"], "intermediate_size": pruned["intermediate_size"],
            "dev_score_fp32": student["best_dev_score"], **measure(cfg, artifacts["int8"], ctx),
            "seconds": round(time.perf_counter() - start, 1)}


def choose(rows: list[dict], objective: str) -> dict | None:
    """The best of the candidates within budget at the objective; None when none is."""
    fits = [r for r in rows if r["status"] == "within budget"]
    return min(fits, key=lambda r: r["p50_ms" if objective == "latency" else "size_bytes"], default=None)


def why(chosen: dict, rows: list[dict], cfg: SearchConfig, metric: str, teacher_dev: float) -> str:
    fits = sum(r["status"] in ("within budget", "chosen") for r in rows)
    best = f"p50 {chosen['p50_ms']} ms" if cfg.objective == "latency" else f"{chosen['size_bytes'] / 1e6:.1f} MB"
    return (f"{'fastest' if cfg.objective == 'latency' else 'smallest'} ({best}) of the {fits} candidate(s) whose "
            f"INT8 dev {metric} is within {cfg.max_accuracy_drop:g} points of the teacher's {teacher_dev:.4f}: "
            f"{chosen['dev_score']:.4f} ({-chosen['drop_points']:+.2f} points)")


@register(SearchConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint")
def search(cfg: SearchConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoConfig

    teacher_art = ctx.artifacts[cfg.teacher] if cfg.teacher else parent
    config = AutoConfig.from_pretrained(parent.path)
    depth = config.num_hidden_layers
    candidates = cfg.space.candidates()
    too_deep = sorted({c.layers for c in candidates if c.layers > depth})
    if too_deep:
        raise CompressError(f"{cfg.name}: space.layers {too_deep} exceed the input's {depth} layers")
    whole = [c.id for c in candidates if c.layers == depth and not c.heads and not c.ffn]
    if whole:
        raise CompressError(f"{cfg.name}: candidate {whole[0]} keeps the whole model (nothing to prune); drop it "
                            "from space")
    if cfg.sequence_length > config.max_position_embeddings:
        raise CompressError(f"{cfg.name}: sequence_length {cfg.sequence_length} is longer than the input's "
                            f"max_position_embeddings {config.max_position_embeddings}")
    candidates.sort(key=lambda c: c.estimated_cost(config, cfg.objective, cfg.sequence_length))
    teacher = load_classifier(teacher_art.path, ctx.data.labels, ctx.allow_pickle, ctx.task)
    dev = evaluate(TorchRuntime(teacher).run, load_tokenizer(teacher_art.path), ctx.data.dev, ctx.data.labels,
                   ctx.max_length, ctx.eval_batch_size, desc=f"{cfg.name}: teacher dev")
    teacher_dev, metric = dev["score"], dev["metric"]
    ctx.log.info("%s: %d candidates, cheapest first: %s; teacher dev %s %.4f, budget %g points", cfg.name,
                 len(candidates), [c.id for c in candidates], metric, teacher_dev, cfg.max_accuracy_drop)
    rows, start, fit = [], time.perf_counter(), None
    with named(ctx, teacher_art) as teacher_name, shared_teacher_outputs(ctx):
        for candidate in candidates:
            row = candidate.settings()
            spent = (time.perf_counter() - start) / 60
            if cfg.max_minutes is not None and spent >= cfg.max_minutes:
                rows.append(row | {"status": "not run", "reason": f"the search's {cfg.max_minutes:g}-minute budget "
                                   f"was spent ({spent:.1f} min)"})
                continue
            if fit and cfg.stop_at_first_fit:
                rows.append(row | {"status": "not run", "reason": f"{fit}, estimated cheaper, met the budget "
                                   "(stop_at_first_fit)"})
                continue
            try:
                row |= run_candidate(cfg, candidate, parent, teacher_name, ctx, out / "candidates" / candidate.id,
                                     depth)
            except StageFailed as e:  # e.g. INT8 parity: this candidate is out, the others still count
                rows.append(row | {"status": "failed", "reason": str(e)})
                ctx.log.warning("%s: %s failed: %s", cfg.name, candidate.id, e)
                continue
            row["drop_points"] = points_below(teacher_dev, row["dev_score"])
            row["status"] = "within budget" if row["drop_points"] <= cfg.max_accuracy_drop else "over budget"
            fit = fit or (candidate.id if row["status"] == "within budget" else None)
            rows.append(row | {"reason": ""})
            ctx.log.info("%s: %s: dev %s %.4f INT8 (%.4f FP32, %+.2f points), p50 %.2f ms, %.1f MB, %s (%.0f s)",
                         cfg.name, candidate.id, metric, row["dev_score"], row["dev_score_fp32"], -row["drop_points"],
                         row["p50_ms"], row["size_bytes"] / 1e6, row["status"], row["seconds"])
    chosen = choose(rows, cfg.objective)
    if chosen is None:
        tried = "; ".join(f"{r['id']}: {r['status']}" + (f" ({-r['drop_points']:+.2f} points)" if "drop_points" in r
                                                         else f" ({r['reason']})") for r in rows)
        raise StageFailed(f"{cfg.name}: no candidate's INT8 model kept the dev {metric} within "
                          f"{cfg.max_accuracy_drop:g} points of the teacher's {teacher_dev:.4f}: {tried}")
    chosen["status"] = "chosen"
    reason = why(chosen, rows, cfg, metric, teacher_dev)
    ctx.log.info("%s: chose %s: %s", cfg.name, chosen["id"], reason)
    checkpoint = out / "candidates" / chosen["id"] / ("vocab" if cfg.vocabulary else "student")
    for f in checkpoint.iterdir():
        shutil.move(f, out / f.name)
    for folder in (out / "candidates").iterdir():
        for part in folder.iterdir():
            if part.name not in KEPT:
                shutil.rmtree(part)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {
        "search": {"objective": cfg.objective, "metric": metric, "max_drop_points": cfg.max_accuracy_drop,
                   "teacher": teacher_art.name, "teacher_dev_score": teacher_dev,
                   "sequence_length": cfg.sequence_length, "threads": cfg.threads, "chosen": chosen["id"],
                   "why": reason, "candidates": rows},
        "best_dev_score": chosen["dev_score_fp32"], "metric": metric,
        "search_seconds": round(time.perf_counter() - start, 1),
    })
