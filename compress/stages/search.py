"""search: the fastest (or smallest) student whose INT8 model keeps the teacher's dev score within a budget.

It trains once and judges many (compress/stages/elastic.py): the input is rewired so that heads and FFN neurons
come in order of importance, one distillation trains every candidate of the grid (depth x heads x FFN) as a
sub-network of it, and the vocabulary is pruned once. Each candidate is then cut out and judged as it would ship:
exported, dynamic INT8, its dev score, ONNX Runtime latency (batch 1, `sequence_length`) and file size. The
fastest within budget is chosen; with `refine_epochs`, promising candidates, searched from the fastest, are first
distilled alone a little longer and judged again, and the fastest that then fits is chosen (a cut sub-network
starts far closer to its teacher than a pruned one, so a short refinement is the cheap way to the small end of
the space). When no sub-network fits, the teacher's own INT8 model is judged too, and chosen with a warning if it
fits: the user gets the least-compressed answer rather than none. The step's output is the chosen checkpoint, so
an export and a quantize with the search's settings after it rebuild the very model that was judged.

With `confirm`, a share of dev is held out from all of that: the fastest candidate of many that fit on dev is also
among the luckiest on it, so the choice must fit on examples it was not chosen on too (and a refinement, one of a
few, then needs no margin on the rest: refined_margin). Only dev decides: the test split is never read here.
"""
from __future__ import annotations

import copy
import itertools
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from compress.core.artifact import Artifact, commit, digest
from compress.core.config import Architecture, RecipeShapes, StepConfig, Strict
from compress.core.errors import CompressError, StageFailed
from compress.core.evaluate import drop_standard_error, evaluate, points_below, score_of
from compress.core.latency import measure_latency
from compress.core.models import copy_model_files, load_classifier, load_tokenizer, save_checkpoint
from compress.core.size import architecture_cost, model_bytes
from compress.core.stage import STAGES, Context, StageResult, register
from compress.core.task import encode
from compress.core.train import train
from compress.stages.augment import WordSwap
from compress.stages.distill import DistillConfig, DistillSettings, read_unlabeled
from compress.stages.elastic import Candidate, ElasticLoss, attention_modules, extract, rewire
from compress.stages.prune import IMPORTANCE, ImportanceName, check_prunable, scoring_batches
from compress.stages.quantize import quantize as _registers_quantize  # noqa: F401  candidates go through it
from compress.stages.quantize_methods import DynamicConfig
from compress.stages.search_report import SearchMetrics, search_section
from compress.stages.vocab_prune import VocabPruneConfig
from export.onnx import ExportConfig
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime

# Candidate folders kept once the search is over: the INT8 model each was judged by (small, and what a user
# would want to re-measure); the chosen one's checkpoint becomes the step's own files.
KEPT = ("int8",)
# Dev examples each candidate's export and INT8 model are parity-checked on: a broken conversion shows on any batch,
# the INT8 model's dev score is its real judge, and the steps after the search check the chosen one in full.
CANDIDATE_PARITY = {"examples": 32}


class SearchSpace(Strict):
    """Candidates are every combination of the three lists."""

    layers: list[int] = Field([3], min_length=1, description="Encoder layers a candidate keeps: the teacher "
                              "layers distillation's default layer map reads, evenly spaced up to the top one "
                              "(ALBERT: applications of its shared layer).")
    heads: list[float] = Field([0.0], min_length=1, description="Fractions of attention heads pruned in every "
                               "layer (each layer's least important).")
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


class SearchConfig(StepConfig):
    type: Literal["search"] = "search"
    teacher: str | None = Field(None, description="Earlier hf-checkpoint step that teaches and sets the budget's "
                                "reference score; default: the input.")
    space: SearchSpace = SearchSpace()
    max_accuracy_drop: float = Field(1.0, ge=0, description="Points of the task's score (accuracy, entity F1) a "
                                     "candidate's INT8 model may lose on dev against the FP32 teacher.")
    objective: Literal["latency", "size"] = Field("latency", description="What the chosen one is best at among "
                                                  "those within budget: p50 latency, or file size.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-time budget for judging: candidates not started "
                                      "once it is spent (training included) are reported as not run.")
    stop_at_first_fit: bool = Field(False, description="Candidates are judged cheapest first (estimated MACs or "
                                    "weights); stop at the first within budget instead of judging the rest.")
    importance: ImportanceName = Field("taylor", description="prune's importance, which orders heads and neurons.")
    prune_batches: int = Field(32, ge=1, description="Training batches that importance is scored on.")
    distillation: DistillSettings = Field(DistillSettings(keep="last"), description="The elastic distillation and "
                                          "the refinements (distill's keys, without student and teacher); they keep "
                                          "their last epoch, since dev then judges them.")
    sandwich: int = Field(2, ge=0, description="Sub-networks drawn at random per training step, besides the "
                          "largest and the smallest of the space (each costs a forward and backward pass).")
    refine_epochs: int = Field(0, ge=0, le=100, description="Then distill promising candidates alone for this many "
                               "epochs (distillation's other keys) and judge them again.")
    refine_tries: int = Field(2, ge=1, description="How many candidates may be refined (an exponential search "
                              "of the promising ones from the fastest: tries 1, 2, 4, 8 ... then a bisection "
                              "back to the fastest that fits).")
    refine_within: float = Field(1.0, ge=0, description="Points beyond the budget a candidate may score as cut and "
                                 "still be refined: how much refinement is expected to win back.")
    refine_minutes: float | None = Field(None, gt=0, description="Minutes the refinements may take together: the "
                                         "next is not started when it would end beyond them (its time predicted "
                                         "from the last one's, scaled by the two candidates' p50, or size). The "
                                         "first always runs.")
    vocabulary: VocabPruneConfig | None = Field(None, description="vocab_prune of the trained elastic model before "
                                                "candidates are cut (vocab_prune's keys); unset: the teacher's.")
    quantization: DynamicConfig = Field(DynamicConfig(name="candidate-int8", parity=CANDIDATE_PARITY),
                                        description="Every candidate's dynamic INT8 (quantize's dynamic keys).")
    sequence_length: int = Field(128, ge=8, le=512, description="Tokens per example when timing (batch 1, padded).")
    threads: int = Field(1, ge=1, description="ONNX Runtime threads when timing.")
    workers: int = Field(1, ge=1, description="Processes that cut, export, quantize and score candidates at once "
                         "(each on one thread); their latencies are then timed one at a time, with nothing else "
                         "running. Up to the machine's cores.")
    confirm: float = Field(0.0, ge=0, le=0.9, description="Share of dev (a seeded draw) held out from judging: "
                           "candidates are judged and refined on the rest, and the one chosen must fit on this share "
                           "too, by the margin; the fastest that fit are tried in turn. 0: all of dev judges.")
    margin: float = Field(1.0, ge=0, description="Standard errors of its dev drop (a paired bootstrap over the dev "
                          "examples) by which a candidate must fit the budget: the smaller the dev set, and the more "
                          "often a candidate disagrees with the teacher, the less a drop measured on it says.")

    @model_validator(mode="before")
    @classmethod
    def _sub_steps_are_named(cls, data: Any) -> Any:
        """The candidates' vocab_prune and quantize settings are steps without a name (or method) of their own."""
        for field, own in (("vocabulary", {"name": "candidate-vocab"}),
                           ("quantization", {"name": "candidate-int8", "method": "dynamic",
                                             "parity": CANDIDATE_PARITY})):
            if isinstance(data, dict) and isinstance(data.get(field), dict):
                data = data | {field: own | data[field]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _trainings_keep_their_last_epoch(cls, data: Any) -> Any:
        """Dev judges every candidate: an epoch picked as dev's best would be judged by the data that picked it."""
        given = isinstance(data, dict) and data.get("distillation")
        if isinstance(given, dict):
            if given.get("keep", "last") != "last":
                raise ValueError(f"distillation.keep {given['keep']!r}: a search's trainings keep their last epoch, "
                                 "since dev then judges the candidates (the best epoch on dev would flatter them)")
            data = data | {"distillation": given | {"keep": "last"}}
        return data

    @model_validator(mode="after")
    def _checks(self) -> SearchConfig:
        kept = self.vocabulary and self.vocabulary.max_positions
        if kept and kept < self.sequence_length:
            raise ValueError(f"vocabulary.max_positions {kept} is shorter than sequence_length "
                             f"{self.sequence_length}, the length candidates are timed at")
        if self.distillation.loss.attention or self.distillation.loss.layer_map:
            raise ValueError("distillation.loss: attention and layer_map are not supported by the search (its "
                             "heads are reordered by importance and each depth has its own layer map)")
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


def checkpoint(name: str, model, tokenizer, folder: Path, parent: Artifact, *key: object) -> Artifact:
    """A model of the search's own making saved as an hf-checkpoint artifact the registered stages can take."""
    save_checkpoint(model, tokenizer, folder)
    return Artifact(name, "hf-checkpoint", folder, digest(name, parent.hash, *key), parent.name, "search",
                    {"model": "model.safetensors"})


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
    """The elastic training and any refinement distil from one teacher on the same texts, so the teacher runs
    once per text for all of them (distill's cache_teacher); the outputs are freed when the search ends."""
    ctx.teacher_outputs = {}
    try:
        yield
    finally:
        ctx.teacher_outputs = None


def train_elastic(cfg: SearchConfig, parent: Artifact, teacher, grid: list[Candidate], ctx: Context,
                  out: Path) -> tuple[Artifact, dict]:
    """The input rewired by importance, then distilled as every candidate of `grid` at once; saved to `out`."""
    tokenizer = load_tokenizer(parent.path)
    model = load_classifier(parent.path, ctx.data.labels, ctx.allow_pickle, ctx.task)
    scoring = scoring_batches(tokenizer, cfg.importance, cfg.prune_batches, cfg.distillation.batch_size, ctx)
    rewire(model, IMPORTANCE[cfg.importance](model, scoring))
    settings = cfg.distillation
    cache = ctx.teacher_outputs.setdefault(parent.hash, {}) if settings.cache_teacher else None
    order = [c.estimated_cost(model.config, "latency", cfg.sequence_length) for c in grid]
    swap = WordSwap(settings.augment, tokenizer, teacher, ctx.seed) if settings.augment else None
    loss = ElasticLoss(settings.loss, teacher, grid, order, cfg.sandwich, cache, ctx.seed, swap)
    extra = read_unlabeled(settings.unlabeled, ctx, f"{cfg.name} elastic")
    start = time.perf_counter()
    history = train(model, tokenizer, settings, ctx, f"{cfg.name} elastic", loss_fn=loss,
                    train_examples=ctx.data.train + extra if extra else None)
    history["train_seconds"] = round(time.perf_counter() - start, 1)
    return checkpoint(f"{cfg.name}-elastic", model, tokenizer, out, parent, settings.model_dump(), cfg.sandwich,
                      [c.id for c in grid]), history


def elastic_model(cfg: SearchConfig, parent: Artifact, teacher_art: Artifact, teacher, grid: list[Candidate],
                  ctx: Context) -> tuple[Artifact, dict]:
    """The trained elastic model, kept in the run folder's cache/ under a hash of what training reads: a search
    re-run with another budget, objective or refinement re-judges the candidates without training again."""
    key = digest(parent.hash, teacher_art.hash, cfg.distillation.model_dump(), cfg.sandwich, cfg.importance,
                 cfg.prune_batches, [c.id for c in grid])
    folder = ctx.run_dir / "cache" / f"elastic-{key}"
    done = Artifact.load(folder)
    if done and done.hash == key:
        ctx.log.info("%s: elastic model of these training settings reused from %s", cfg.name, folder)
        return done, done.metrics | {"reused": True}
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trained, history = train_elastic(cfg, parent, teacher, grid, ctx, partial)
    trained.hash, trained.metrics = key, history
    return commit(partial, folder, trained), history


def score(cfg: SearchConfig, int8: Artifact, ctx: Context) -> dict[str, Any]:
    """The INT8 model as it would ship, all but its latency: dev score (and each example's part in it), size, MACs."""
    runtime = OrtRuntime(int8.file("model"), threads=cfg.threads, precision="int8")
    dev = evaluate(runtime.run, load_tokenizer(int8.path), ctx.data.dev, ctx.data.labels, ctx.max_length,
                   ctx.eval_batch_size, desc=f"{int8.name} dev", parts=True)
    cost = architecture_cost(int8.path, cfg.sequence_length) or {}
    return {"dev_score": dev["score"], "dev_parts": dev["parts"], "size_bytes": model_bytes(int8),
            "macs": cost.get(f"macs_seq{cfg.sequence_length}")}


def latency_of(cfg: SearchConfig, folder: Path, ctx: Context) -> float:
    """p50 ms of the INT8 model in `folder` at the search's shape (batch 1, a real dev text padded)."""
    runtime = OrtRuntime(folder / "model.onnx", threads=cfg.threads, precision="int8")
    inputs = encode(load_tokenizer(folder), ctx.data.dev[:1], cfg.sequence_length, pad_to_max=True)
    return measure_latency(lambda: runtime.run(inputs), warmup=5, min_repeats=20, max_seconds=3.0, batch_size=1,
                           min_seconds=0.5)["p50_ms"]


def to_int8(cfg: SearchConfig, student: Artifact, ctx: Context, folder: Path) -> Artifact:
    """`student` exported and made INT8 into folder/int8, as the steps after the search will."""
    onnx = run_stage(ExportConfig(name=f"{student.name}-onnx", parity=CANDIDATE_PARITY), student, ctx, folder / "onnx")
    int8 = run_stage(cfg.quantization.model_copy(update={"name": f"{student.name}-int8"}), onnx, ctx, folder / "int8")
    shutil.rmtree(folder / "onnx")
    return int8


def ship(cfg: SearchConfig, student: Artifact, ctx: Context, folder: Path) -> dict[str, Any]:
    """`student` exported, INT8, scored and timed."""
    int8 = to_int8(cfg, student, ctx, folder)
    return score(cfg, int8, ctx) | {"p50_ms": latency_of(cfg, int8.path, ctx)}


def judge(cfg: SearchConfig, candidate: Candidate, elastic: Artifact, supernet, ctx: Context,
          folder: Path) -> dict[str, Any]:
    """`candidate` cut out of the trained elastic model, saved, made INT8 and scored (timed later, alone)."""
    start = time.perf_counter()
    sub = extract(supernet, candidate)
    student = checkpoint(f"{cfg.name}-{candidate.id}", sub, load_tokenizer(elastic.path), folder / "student",
                         elastic, candidate.id)
    heads = [a.num_attention_heads for a in attention_modules(sub)]
    return {"heads_per_layer": heads * (sub.config.num_hidden_layers if len(heads) == 1 else 1),
            "intermediate_size": sub.config.intermediate_size, **score(cfg, to_int8(cfg, student, ctx, folder), ctx),
            "seconds": round(time.perf_counter() - start, 1)}


# A judging process's trained elastic model and context, set once by its initializer (not sent with each task).
_worker: tuple[torch.nn.Module, Context] | None = None


def _start_worker(elastic: Artifact, ctx: Context) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = load_classifier(elastic.path, ctx.data.labels, ctx.allow_pickle, ctx.task), ctx


def _judge_in_worker(cfg: SearchConfig, candidate: Candidate, elastic: Artifact, folder: Path) -> dict[str, Any]:
    supernet, ctx = _worker
    return judge(cfg, candidate, elastic, supernet, ctx, folder)


@contextmanager
def judges(cfg: SearchConfig, elastic: Artifact, ctx: Context) -> Iterator[Callable[[Candidate, Path], Callable]]:
    """`submit(candidate, folder)` -> a function returning judge()'s row: with one worker, judged in this process
    when asked for; with more, started at once in `workers` spawned processes (cut, export, quantize and dev
    scoring are single-threaded Python and ONNX Runtime work). Work not yet started is dropped on exit."""
    if cfg.workers == 1:
        supernet = load_classifier(elastic.path, ctx.data.labels, ctx.allow_pickle, ctx.task)
        yield lambda candidate, folder: lambda: judge(cfg, candidate, elastic, supernet, ctx, folder)
        return
    shared = copy.copy(ctx)
    shared.teacher_outputs = None  # the training's cache stays here
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(elastic, shared)) as pool:
        futures = []

        def submit(candidate: Candidate, folder: Path) -> Callable:
            futures.append(pool.submit(_judge_in_worker, cfg, candidate, elastic, folder))
            return futures[-1].result
        try:
            yield submit
        finally:
            for future in futures:
                future.cancel()


def refine(cfg: SearchConfig, chosen: dict, elastic: Artifact, supernet, teacher: str, ctx: Context,
           folder: Path) -> tuple[Artifact, dict[str, Any]]:
    """The chosen candidate cut from the elastic model before vocabulary pruning, distilled alone for
    `refine_epochs`, vocabulary-pruned as the elastic model was, then shipped and measured."""
    candidate = Candidate(chosen["layers"], chosen["heads"], chosen["ffn"])
    start = time.perf_counter()
    cut = checkpoint(f"{cfg.name}-{candidate.id}-cut", extract(supernet, candidate), load_tokenizer(elastic.path),
                     folder / "cut", elastic, candidate.id)
    settings = cfg.distillation.model_dump() | {"epochs": cfg.refine_epochs}
    student = run_stage(DistillConfig(name=f"{cfg.name}-refined", teacher=teacher, **settings), cut, ctx,
                        folder / "student")
    if cfg.vocabulary:
        student = run_stage(cfg.vocabulary.model_copy(update={"name": f"{cfg.name}-refined-vocab"}), student, ctx,
                            folder / "vocab")
    row = ship(cfg, student, ctx, folder) | {"dev_score_fp32": student.metrics.get("dev_score"),
                                             "seconds": round(time.perf_counter() - start, 1)}
    return student, row


@dataclass(frozen=True)
class Reference:
    """The teacher's per-example dev parts, and which dev examples judge candidates and which, held out, confirm
    the choice. Why hold some out: the fastest of many candidates that fit on dev is also among the luckiest on
    it, and examples it was not chosen on do not share that luck."""

    parts: np.ndarray | None
    score: float  # on the judging examples
    dev_size: int
    test_size: int  # examples the gate scores on (0: no gate noise added)
    judging: np.ndarray | None = None  # their indices; None: all of dev
    held_out: np.ndarray | None = None

    @classmethod
    def split(cls, dev: dict, share: float, seed: int, dev_size: int, test_size: int) -> Reference:
        if not share:
            return cls(dev["parts"], dev["score"], dev_size, test_size)
        order = np.random.default_rng(seed).permutation(len(dev["parts"]))
        held = round(share * len(order))
        held_out, judging = np.sort(order[:held]), np.sort(order[held:])
        return cls(dev["parts"], float(score_of(dev["parts"][judging])), dev_size, test_size, judging, held_out)

    def fits(self, drop: float, se: float, on: np.ndarray | None, margin: float, budget: float) -> bool:
        """Whether the gate's test drop is within `budget` by `margin` of its standard error, as predicted from a
        dev drop measured on the examples `on` (None: all of dev): the gate compares a drop measured on test, whose
        own noise (the dev drop's, scaled by the two sizes) adds to the dev drop's."""
        examples = self.dev_size if on is None else len(on)
        gate = math.sqrt(1 + examples / self.test_size) if self.test_size else 1.0
        return drop + margin * se * gate <= budget

    def drop(self, parts: np.ndarray | None, score: float, on: np.ndarray | None) -> tuple[float, float, float]:
        """A model's score, its drop (points) and that drop's standard error on dev examples `on` (None: all, the
        model's `score` as given), from each example's `parts`."""
        if on is not None:
            score, reference, parts = float(score_of(parts[on])), float(score_of(self.parts[on])), parts[on]
        else:
            reference = self.score
        return score, points_below(reference, score), round(drop_standard_error(
            self.parts if on is None else self.parts[on], parts), 3)


def measured_by(objective: str) -> str:
    """The row key an objective ranks candidates by."""
    return "p50_ms" if objective == "latency" else "size_bytes"


def pareto(rows: list[dict], objective: str) -> None:
    """Mark the candidates no other beats on both dev score and the objective (p50 or size)."""
    key = measured_by(objective)
    judged = [r for r in rows if r.get("dev_score") is not None]
    for r in judged:
        r["pareto"] = not any(o is not r and o["dev_score"] >= r["dev_score"] and o[key] <= r[key]
                              and (o["dev_score"] > r["dev_score"] or o[key] < r[key]) for o in judged)


def near_front(rows: list[dict], objective: str, on: np.ndarray | None) -> list[dict]:
    """The judged rows that no row at least as fast (small) beats on dev by more than one standard error of the two
    scores' difference (paired, over the dev examples `on`; None: all). Why: one elastic epoch leaves cut shapes
    whose scores differ by about that noise, so the Pareto front of those scores alone passes over shapes that
    refinement ranks otherwise (on a small dev set, the luckiest fast cut can be the whole front)."""
    key = measured_by(objective)
    judged = [r for r in rows if r.get("dev_score") is not None]

    def beaten(r: dict) -> bool:
        return any(o is not r and o[key] <= r[key] and o["drop_points"] < r["drop_points"]
                   and r["drop_points"] - o["drop_points"] > paired_error(o, r, on) for o in judged)
    return [r for r in judged if not beaten(r)]


def paired_error(a: dict, b: dict, on: np.ndarray | None) -> float:
    """Points: the standard error of the difference of two rows' dev scores (0 without per-example parts)."""
    if a.get("dev_parts") is None or b.get("dev_parts") is None:
        return 0.0
    return drop_standard_error(*(r["dev_parts"] if on is None else r["dev_parts"][on] for r in (a, b)))


def choose(rows: list[dict], objective: str) -> dict | None:
    """The best of the candidates within budget at the objective; None when none is."""
    fits = [r for r in rows if r["status"] == "within budget"]
    return min(fits, key=lambda r: r[measured_by(objective)], default=None)


def why(chosen: dict, rows: list[dict], cfg: SearchConfig, metric: str, teacher: Reference) -> str:
    fits = sum(r["status"] in ("within budget", "chosen") for r in rows)
    best = f"p50 {chosen['p50_ms']} ms" if cfg.objective == "latency" else f"{chosen['size_bytes'] / 1e6:.1f} MB"
    margin = f"by {cfg.margin:g} standard error(s) of the test drop it predicts"
    dev = f"{chosen['dev_score']:.4f} ({-chosen['drop_points']:+.2f} points)"
    if "held_out_drop_points" in chosen:
        margin = f"(on the held-out examples {margin}; on the judging ones too, unless refined)"
        dev += (f" on the judging examples; on the {len(teacher.held_out)} held-out dev examples "
                f"{-chosen['held_out_drop_points']:+.2f} ± {chosen['held_out_drop_se']:.2f} points")
    return (f"{'fastest' if cfg.objective == 'latency' else 'smallest'} ({best}) of the {fits} candidate(s) whose "
            f"INT8 dev {metric} is within {cfg.max_accuracy_drop:g} points of the teacher's {teacher.score:.4f} "
            f"{margin}: {dev}")


def judged(row: dict, cfg: SearchConfig, teacher: Reference, margin: float) -> dict:
    """Score, drop and status of a measured row on the judging examples: within budget when its drop, plus
    `margin` standard errors of that drop, is at most the budget. Its per-example parts stay for confirmed()."""
    row["dev_score"], row["drop_points"], row["drop_se"] = teacher.drop(row["dev_parts"], row["dev_score"],
                                                                        teacher.judging)
    fits = teacher.fits(row["drop_points"], row["drop_se"], teacher.judging, margin, cfg.max_accuracy_drop)
    row["status"] = "within budget" if fits else "over budget"
    return row | {"reason": row.get("reason", "")}


def confirmed(cfg: SearchConfig, rows: list[dict], teacher: Reference) -> dict | None:
    """The fastest (or smallest) candidate within budget whose INT8 model also fits on the held-out dev examples,
    by the margin; those before it that do not are marked. None when none does."""
    key = measured_by(cfg.objective)
    return next((row for row in sorted((r for r in rows if r["status"] == "within budget"), key=lambda r: r[key])
                 if holds_out(cfg, row, teacher)), None)


def holds_out(cfg: SearchConfig, row: dict, teacher: Reference) -> bool:
    """Whether a row within budget on the judging examples fits on the held-out ones too (always, with none held
    out); a row that does not is marked "not confirmed", with its held-out drop as the reason."""
    if teacher.held_out is None:
        return True
    _, drop, se = teacher.drop(row["dev_parts"], row["dev_score"], teacher.held_out)
    row |= {"held_out_drop_points": drop, "held_out_drop_se": se}
    if teacher.fits(drop, se, teacher.held_out, cfg.margin, cfg.max_accuracy_drop):
        return True
    row["status"] = "not confirmed"
    row["reason"] = f"{-drop:+.2f} ± {se:.2f} points on the {len(teacher.held_out)} held-out dev examples"
    return False


def judge_all(cfg: SearchConfig, grid: list[Candidate], elastic: Artifact, ctx: Context, out: Path,
              teacher: Reference, metric: str, started: float) -> list[dict]:
    """Every candidate of `grid` (cheapest first) judged, or 'not run' once the time or first-fit rule says so;
    then every judged one timed."""
    rows, fit = [], None
    with judges(cfg, elastic, ctx) as submit:
        results = {c.id: submit(c, out / "candidates" / c.id) for c in grid}
        for candidate in grid:
            row = candidate.settings()
            spent = (time.perf_counter() - started) / 60
            if cfg.max_minutes is not None and spent >= cfg.max_minutes:
                rows.append(row | {"status": "not run", "reason": f"the search's {cfg.max_minutes:g}-minute "
                                   f"budget was spent ({spent:.1f} min)"})
                continue
            if fit and cfg.stop_at_first_fit:
                rows.append(row | {"status": "not run", "reason": f"{fit}, estimated cheaper, met the budget "
                                   "(stop_at_first_fit)"})
                continue
            try:
                row = judged(row | results[candidate.id](), cfg, teacher, cfg.margin)
            except StageFailed as e:  # e.g. INT8 parity: this candidate is out, the others still count
                rows.append(row | {"status": "failed", "reason": str(e)})
                ctx.log.warning("%s: %s failed: %s", cfg.name, candidate.id, e)
                continue
            fit = fit or (candidate.id if row["status"] == "within budget" else None)
            rows.append(row)
    for row in rows:
        if "dev_score" in row:
            start = time.perf_counter()
            row["p50_ms"] = latency_of(cfg, out / "candidates" / row["id"] / "int8", ctx)
            row["seconds"] = round(row["seconds"] + time.perf_counter() - start, 1)
            ctx.log.info("%s: %s: dev %s %.4f INT8 (%+.2f points), p50 %.2f ms, %.1f MB, %s (%.0f s)", cfg.name,
                         row["id"], metric, row["dev_score"], -row["drop_points"], row["p50_ms"],
                         row["size_bytes"] / 1e6, row["status"], row["seconds"])
    return rows


def fall_back_to_teacher(cfg: SearchConfig, teacher_art: Artifact, ctx: Context, out: Path, teacher: Reference,
                         metric: str) -> dict:
    """The teacher's own INT8 model: the least-compressed answer there is. It is one answer fixed beforehand, not
    the luckiest of many, so its dev drop is held to the budget without the margin: on a dev set too small to
    confirm a point either way (a hundred examples, where one changed prediction is a point), the user still gets
    their model's INT8 form unless it measurably loses more than the budget (a warning says so)."""
    ctx.log.warning("%s: no sub-network's INT8 model kept the dev %s within %g points; judging the teacher's own "
                    "INT8 model", cfg.name, metric, cfg.max_accuracy_drop)
    start = time.perf_counter()
    config = load_classifier(teacher_art.path, ctx.data.labels, ctx.allow_pickle, ctx.task).config
    row = {"id": "teacher", "layers": config.num_hidden_layers, "heads": 0.0, "ffn": 0.0,
           "intermediate_size": config.intermediate_size}
    try:
        row |= ship(cfg, teacher_art, ctx, out / "candidates" / "teacher")
    except StageFailed as e:
        return row | {"status": "failed", "reason": str(e)}
    return judged(row | {"seconds": round(time.perf_counter() - start, 1)}, cfg, teacher, margin=0.0)


def search_figures(cfg: SearchConfig, rows: list[dict], metric: str, teacher_art: Artifact, teacher: Reference,
                   chosen: dict | None, reason: str, costs: dict) -> dict:
    pareto(rows, cfg.objective)
    rows = [{k: v for k, v in r.items() if k != "dev_parts"} for r in rows]
    return {"objective": cfg.objective, "metric": metric, "max_drop_points": cfg.max_accuracy_drop,
            "teacher": teacher_art.name, "teacher_dev_score": teacher.score, "margin_se": cfg.margin,
            "held_out": 0 if teacher.held_out is None else len(teacher.held_out),
            "sequence_length": cfg.sequence_length, "threads": cfg.threads, "chosen": chosen and chosen["id"],
            "why": reason, "candidates": rows, **costs}


@register(SearchConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint", metrics=SearchMetrics,
          section=search_section)
def search(cfg: SearchConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoConfig

    teacher_art = ctx.artifacts[cfg.teacher] if cfg.teacher else parent
    config = AutoConfig.from_pretrained(parent.path)
    depth = config.num_hidden_layers
    grid = cfg.space.candidates()
    too_deep, grid = [c for c in grid if c.layers > depth], [c for c in grid if c.layers <= depth]
    if not grid:
        raise CompressError(f"{cfg.name}: space.layers {cfg.space.layers} all exceed the input's {depth} layers")
    if too_deep:  # a recipe written for one model runs on a shallower one: its other shapes still answer
        ctx.log.warning("%s: space.layers %s exceed the input's %d layers: those %d candidates are not run",
                        cfg.name, sorted({c.layers for c in too_deep}), depth, len(too_deep))
    whole = [c.id for c in grid if c.layers == depth and not c.heads and not c.ffn]
    if whole:
        raise CompressError(f"{cfg.name}: candidate {whole[0]} keeps the whole model (nothing to prune); drop it "
                            "from space")
    if cfg.sequence_length > config.max_position_embeddings:
        raise CompressError(f"{cfg.name}: sequence_length {cfg.sequence_length} is longer than the input's "
                            f"max_position_embeddings {config.max_position_embeddings}")
    grid.sort(key=lambda c: c.estimated_cost(config, cfg.objective, cfg.sequence_length))
    teacher = load_classifier(teacher_art.path, ctx.data.labels, ctx.allow_pickle, ctx.task)
    dev = evaluate(TorchRuntime(teacher).run, load_tokenizer(teacher_art.path), ctx.data.dev, ctx.data.labels,
                   ctx.max_length, ctx.eval_batch_size, desc=f"{cfg.name}: teacher dev", parts=True)
    reference = Reference.split(dev, cfg.confirm, ctx.seed, len(ctx.data.dev), len(ctx.data.test))
    metric = dev["metric"]
    ctx.log.info("%s: %d candidates, cheapest first: %s; teacher dev %s %.4f, budget %g points", cfg.name,
                 len(grid), [c.id for c in grid], metric, reference.score, cfg.max_accuracy_drop)
    started = time.perf_counter()
    with named(ctx, teacher_art) as teacher_name, shared_teacher_outputs(ctx):
        trained, history = elastic_model(cfg, parent, teacher_art, teacher, grid, ctx)
        elastic = trained if not cfg.vocabulary else run_stage(
            cfg.vocabulary.model_copy(update={"name": f"{cfg.name}-vocab"}), trained, ctx, out / "elastic-vocab")
        judging = time.perf_counter()
        rows = judge_all(cfg, grid, elastic, ctx, out, reference, metric, started) + [
            c.settings() | {"status": "not run", "reason": f"deeper than the input's {depth} layers"} for c in too_deep]
        chosen = confirmed(cfg, rows, reference)  # a cut that the held-out half rejects must not bound refinement
        students = {r["id"]: out / "candidates" / r["id"] / "student" for r in rows}
        refine_stop = ""
        if cfg.refine_epochs:
            chosen, refine_stop = refine_fastest(cfg, rows, chosen, students, trained, teacher_name, ctx, out,
                                                 reference)
    if chosen is None:
        rows.append(fall_back_to_teacher(cfg, teacher_art, ctx, out, reference, metric))
        chosen, students["teacher"] = choose(rows, cfg.objective), teacher_art.path
    costs = {"train_seconds": history["train_seconds"], "judge_seconds": round(time.perf_counter() - judging, 1),
             "elastic_history": history["history"], "elastic_reused": history.get("reused", False),
             "refine_stop": refine_stop}
    if chosen is None:
        tried = "; ".join(f"{r['id']}: {r['status']}" + (f" ({-r['drop_points']:+.2f} points)" if "drop_points" in r
                                                         else f" ({r['reason']})") for r in rows)
        raise StageFailed(f"{cfg.name}: no candidate's INT8 model, the teacher's own included, kept the dev {metric} "
                          f"within {cfg.max_accuracy_drop:g} points of the teacher's {reference.score:.4f}: {tried}",
                          metrics={"search": search_figures(cfg, rows, metric, teacher_art, reference, None, "",
                                                            costs)})
    chosen["status"] = "chosen"
    reason = why(chosen, rows, cfg, metric, reference)
    if chosen["id"] == "teacher":
        reason += (f"; no sub-network fits, so this is the teacher itself, uncompressed but for INT8 (held to the "
                   f"budget without the margin: its drop's standard error is {chosen['drop_se']:.2f} points)")
        ctx.log.warning("%s: %s", cfg.name, reason)
    ctx.log.info("%s: chose %s: %s", cfg.name, chosen["id"], reason)
    for f in students[chosen["id"]].iterdir():
        (shutil.copy2 if chosen["id"] == "teacher" else shutil.move)(f, out / f.name)
    tidy(out)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {
        "search": search_figures(cfg, rows, metric, teacher_art, reference, chosen, reason, costs),
        "best_dev_score": chosen["dev_score"], "metric": metric,
        "search_seconds": round(time.perf_counter() - started, 1),
    })


def refine_fastest(cfg: SearchConfig, rows: list[dict], chosen: dict | None, students: dict[str, Path],
                   trained: Artifact, teacher: str, ctx: Context, out: Path,
                   reference: Reference) -> tuple[dict | None, str]:
    """Refine candidates worth it, from the fastest (or smallest), and choose the fastest refinement that fits.

    Worth it: near the front as cut (near_front), at most `refine_within` points beyond the budget (margin
    included), and no slower than the candidate chosen, and confirmed, as cut (which stays chosen if no refinement
    fits). Refinement wins back more the closer a candidate starts, so the fastest of these rarely fit and the
    slowest nearly always do; but a refinement costs about what its candidate's p50 does, so the search starts at
    the cheap end: the 1st, 2nd, 4th, 8th ... fastest until one fits (on the held-out examples too), then a
    bisection of the gap before it (`refine_tries` tries in all). A bisection from the pool's middle spent its
    first try, and most of its time, on a slow candidate it did not keep. Every refinement's row joins the table,
    and its checkpoint `students`. Returns the choice and, when `refine_minutes` stopped the search, why."""
    key = measured_by(cfg.objective)
    limit = chosen[key] if chosen else float("inf")
    pool = sorted((r for r in near_front(rows, cfg.objective, reference.judging) if r[key] <= limit
                   and reference.fits(r["drop_points"], r["drop_se"], reference.judging, cfg.margin,
                                      cfg.max_accuracy_drop + cfg.refine_within)),
                  key=lambda r: r[key])
    supernet = load_classifier(trained.path, ctx.data.labels, ctx.allow_pickle, ctx.task) if pool else None
    # pool[:low] missed; pool[high] is the fastest refinement that fits (len(pool): none yet)
    low, high, last, spent = 0, len(pool), None, 0.0  # last: (seconds, objective figure) of the latest one
    for _ in range(cfg.refine_tries):
        if low >= high:
            break
        i = (low + high) // 2 if high < len(pool) else min(high - 1, max(0, 2 * low - 1))
        candidate = pool[i]
        stop = out_of_time(cfg, candidate[key], last, spent)
        if stop:
            ctx.log.info("%s: %s not refined: %s", cfg.name, candidate["id"], stop)
            return chosen, f"{candidate['id']} not refined: {stop}"
        start = time.perf_counter()
        student, figures = refine(cfg, candidate, trained, supernet, teacher, ctx,
                                  out / "candidates" / f"{candidate['id']}+refined")
        last = (time.perf_counter() - start, candidate[key])
        spent += last[0]
        row = judged({**candidate, **figures, "id": f"{candidate['id']}+refined", "reason": ""}, cfg, reference,
                     refined_margin(cfg, reference))
        rows.append(row)
        students[row["id"]] = student.path
        fits = row["status"] == "within budget" and holds_out(cfg, row, reference)
        ctx.log.info("%s: %s refined: dev %.4f INT8 (as cut %.4f), %s", cfg.name, candidate["id"], row["dev_score"],
                     candidate["dev_score"], row["status"])
        if fits:
            chosen, high = row, i
        else:
            low = i + 1
    return chosen, ""


def refined_margin(cfg: SearchConfig, reference: Reference) -> float:
    """The margin a refinement must fit the judging examples by: none when a held-out share confirms it. Why: the
    margin guards against choosing the luckiest of many on the same examples; a refinement is one of at most
    `refine_tries` models, and the held-out share, which chose none of them, gives the proof by the margin. Asking
    both halves for it asked twice for what one gives, and passed over students level with their teacher."""
    return 0.0 if reference.held_out is not None else cfg.margin


def out_of_time(cfg: SearchConfig, figure: float, last: tuple[float, float] | None, spent: float) -> str:
    """Why refining a candidate whose p50 (or size) is `figure` would take the refinements, `spent` seconds so far,
    beyond `refine_minutes`, or ''. A refinement's time is taken as proportional to its candidate's p50 (size)."""
    if cfg.refine_minutes is None or last is None:
        return ""
    expected = last[0] * figure / last[1]
    if spent + expected <= 60 * cfg.refine_minutes:
        return ""
    return (f"refinements had taken {spent / 60:.1f} min and this one was expected to take {expected / 60:.1f} "
            f"more (refine_minutes {cfg.refine_minutes:g})")


def tidy(out: Path) -> None:
    """Keep the INT8 model of each candidate; the vocabulary-pruned elastic model and the checkpoints go (the
    trained elastic model stays in the run's cache/)."""
    shutil.rmtree(out / "elastic-vocab", ignore_errors=True)
    for folder in (out / "candidates").iterdir():
        for part in folder.iterdir():
            if part.name not in KEPT:
                shutil.rmtree(part)
