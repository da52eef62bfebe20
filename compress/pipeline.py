"""Runs a validated recipe: steps in order, then benchmark, report and gate.

Each step's folder is `<run>/<NN>-<name>`. Its hash covers its own config and its
parent's hash (and so, transitively, the model source, data and seed): a re-run skips
every step whose folder has a manifest with the same hash, and redoes the rest.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from benchmarks.hardware import describe, fingerprint
from benchmarks.report.write import make_report
from benchmarks.suite import METHOD_VERSION, benchmark_isolated, not_measured_row
from compress.core.artifact import MANIFEST, Artifact, commit, digest, write_json_atomic
from compress.core.errors import CompressError, StageFailed, StepUnavailable
from compress.core.lock import run_lock
from compress.core.models import load_call, resolve_source
from compress.core.stage import STAGES, Context
from compress.core.train import process_state
from compress.gate import violations
from compress.recipe import Recipe, load_recipe, recipe_from
from runtimes import BACKENDS


LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging() -> logging.Logger:
    """The run's logger, on stderr; `open_run_folder` adds run.log once the inputs have loaded."""
    log = logging.getLogger("compress")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False  # some libraries configure the root logger; do not print twice
    log_to(log, logging.StreamHandler(sys.stderr))
    return log


def log_to(log: logging.Logger, handler: logging.Handler) -> None:
    handler.setFormatter(LOG_FORMAT)
    log.addHandler(handler)


@contextmanager
def open_run_folder(log: logging.Logger, run_dir: Path, out_root: Path) -> Iterator[None]:
    """Create the run folder, hold its lock for the run (compress.core.lock: a second run on it exits 2 naming this
    one) and log to its run.log. Called once the inputs have loaded, so bad input leaves no folder; a folder that
    cannot be written (--out is, or is under, a regular file) is bad input too."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompressError(f"--out {str(out_root)!r}: cannot write the run folder {str(run_dir)!r}: "
                            f"{e.strerror or e}") from None
    with run_lock(run_dir) as left:
        log_to(log, logging.FileHandler(run_dir / "run.log"))
        if left:
            log.warning("%s: the run that held this folder (%s) ended without releasing it; taken over", run_dir, left)
        yield


def discard_run_folder(log: logging.Logger, created: Path) -> None:
    """Remove what this run created (the run folder, or the --out folder it made for it), its run.log first."""
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        handler.close()
        log.removeHandler(handler)
    shutil.rmtree(created, ignore_errors=True)


def source_artifact(recipe: Recipe) -> Artifact:
    path = recipe.model.folder()
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    h = digest(recipe.model.model_dump(), recipe.data.model_dump(), recipe.seed, weights)
    return Artifact("source", "hf-checkpoint", path, h, None, "source", {"model": "model.safetensors"})


def plan(recipe: Recipe) -> list[str]:
    lines = [f"recipe {recipe.name}: model {recipe.model.source}, data {recipe.data.origin}"]
    for i, step in enumerate(recipe.steps):
        settings = step.model_dump(exclude={"name", "type", "from_"}, exclude_defaults=True)
        if "method" in type(step).model_fields:  # a variant's own default still says which variant it is
            settings = {"method": step.method} | settings
        lines.append(f"  {i:02d}-{step.name}: {step.type} <- {recipe.parent_of(i) or 'source'} {settings or ''}")
    lines.append(f"  then: benchmark on {recipe.benchmark.backends}, report"
                 + (f", gate (max drop {recipe.gate.limits()})" if recipe.gate else ""))
    return lines


def run_step(index: int, recipe: Recipe, ctx: Context, source: Artifact, force: bool) -> Artifact:
    step = recipe.steps[index]
    parent_name = recipe.parent_of(index)
    parent = ctx.artifacts[parent_name] if parent_name else source
    h = digest(step.model_dump(by_alias=True), parent.hash, *(ctx.artifacts[r].hash for r in step.references().values()))
    folder = ctx.run_dir / f"{index:02d}-{step.name}"
    state = process_state()
    state.wait_for_everyone()  # every rank sees the same folders, so all skip or all run
    done = Artifact.load(folder)
    if done and done.hash == h and not force:
        ctx.log.info("%s: up to date, skipped", folder.name)
        return done
    from transformers import set_seed

    set_seed(recipe.seed)  # a stage's result must not depend on what ran before it in this process (resume)
    if not state.is_main_process:  # take part in the stage (DDP training), write nothing; use rank 0's artifact
        with tempfile.TemporaryDirectory() as scratch:
            STAGES[step.type].run(step, parent, ctx, Path(scratch))
        state.wait_for_everyone()
        return Artifact.load(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ctx.log.info("%s: running %s on %s", folder.name, step.type, parent.name)
    start = time.perf_counter()
    try:
        result = STAGES[step.type].run(step, parent, ctx, partial)
    except BaseException:  # Ctrl-C included: leave nothing that could pass for a finished stage
        shutil.rmtree(partial, ignore_errors=True)
        raise
    STAGES[step.type].metrics.model_validate(result.metrics)  # the figures its report section reads, as declared
    metrics = result.metrics | {"stage_seconds": round(time.perf_counter() - start, 1)}
    artifact = Artifact(step.name, result.kind, partial, h, parent.name, step.type, result.files, metrics,
                        load_call(result.kind, partial, result.files))
    committed = commit(partial, folder, artifact)
    state.wait_for_everyone()
    return committed


def run_steps(recipe: Recipe, ctx: Context, source: Artifact, force: bool, skipped: dict[str, str]) -> None:
    """Every step in order, into ctx.artifacts. A step this installation cannot run (StepUnavailable), and every
    step that reads its artifact, is skipped with the reason, recorded in `skipped` by step name."""
    for index, step in enumerate(recipe.steps):
        inputs = [recipe.parent_of(index), *step.references().values()]
        missing = next((name for name in inputs if name in skipped), None)
        try:
            if missing:
                raise StepUnavailable(f"its input {missing!r} was skipped: {skipped[missing]}")
            ctx.artifacts[step.name] = run_step(index, recipe, ctx, source, force)
        except StepUnavailable as e:
            ctx.log.warning("%s: skipped: %s", step.name, e)
            skipped[step.name] = str(e)


def file_stamps(artifact: Artifact) -> list:
    """Size and modification time of each of the artifact's files: a step re-run by hand under the same settings
    (its folder deleted) writes new files under the same hash, and its rows must be measured again."""
    stamps = []
    for name, file in artifact.files.items():
        path = artifact.path / file
        if path.is_file():
            stat = path.stat()
            stamps.append((name, stat.st_size, stat.st_mtime_ns))
    return sorted(stamps)


def benchmark_rows(recipe: Recipe, ctx: Context, skipped: dict[str, str]) -> list[dict]:
    """Rows are cached by (artifact hash and files, back end, benchmark settings, hardware) so a re-run measures
    nothing;
    a failed row is not cached, so the next run tries it again. A skipped step's rows are "not measured", with
    the reason it was skipped."""
    cache = ctx.run_dir / "benchmarks"
    cache.mkdir(exist_ok=True)
    measured = recipe.benchmark.artifacts
    rows = [not_measured_row(step.name, STAGES[step.type].produces, backend, f"step skipped: {skipped[step.name]}")
            for step in recipe.steps if step.name in skipped and (measured is None or step.name in measured)
            for backend in recipe.benchmark.backends if STAGES[step.type].produces in BACKENDS[backend].kinds]
    for artifact in ctx.artifacts.values():
        if measured is not None and artifact.name not in measured:
            continue
        for backend in recipe.benchmark.backends:
            if artifact.kind not in BACKENDS[backend].kinds:
                continue
            key = digest(artifact.hash, file_stamps(artifact), backend, recipe.benchmark.measurement_settings(),
                         fingerprint(), METHOD_VERSION)
            cached = cache / f"{artifact.name}.{backend}.json"
            if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
                rows.append(json.loads(cached.read_text())["row"])
                continue
            ctx.log.info("benchmark %s on %s", artifact.name, backend)
            row = benchmark_isolated(artifact, backend, recipe.benchmark, ctx.data, recipe.data.max_length)
            if row["status"] == "failed":
                ctx.log.error("  %s on %s: failed: %s", artifact.name, backend, row["reason"])
            elif row["status"] != "measured":
                ctx.log.info("  %s on %s: not measured: %s", artifact.name, backend, row["reason"])
            if row["status"] != "failed":
                write_json_atomic(cached, {"key": key, "row": row})
            rows.append(row)
    return rows


def run_recipe(recipe: str | Path | dict, out: str | Path = "runs", force: bool = False) -> dict | None:
    """Run a recipe (a YAML file's path, or the same mapping as a dict) into `out`/<name>, as `python -m
    compress.run` does, and return the report (report.json's content) with `gate`: whether the recipe's gate passed
    and why not (None without a gate). Bad input raises CompressError (the command's exit 2), a stage whose result
    fails its check StageFailed (exit 1); a failed gate is in the result, not raised. Under torchrun, ranks other
    than 0 return None (rank 0 writes and returns the report)."""
    loaded = recipe_from(recipe, "recipe (dict)") if isinstance(recipe, dict) else load_recipe(recipe)
    return run_pipeline(loaded, Path(out), force)


def run_pipeline(recipe: Recipe, out_root: Path, force: bool = False) -> dict | None:
    run_dir = out_root / recipe.name
    ctx = recipe.context(run_dir, setup_logging())
    data, source = ctx.data, source_artifact(recipe)  # bad data fails here, before anything is written
    created = next((p for p in (out_root, run_dir) if not p.exists()), None)  # the outermost folder this run makes
    main = process_state().is_main_process
    with open_run_folder(ctx.log, run_dir, out_root) if main else nullcontext():
        ctx.log.info("run %s -> %s", recipe.name, run_dir)
        ctx.log.info("data %s: %d train / %d dev / %d test, labels %s, rows left out: %s", data.source, len(data.train),
                     len(data.dev), len(data.test), data.labels,
                     ", ".join(f"{n} without {what}" for what, n in data.dropped.items()) or "none")
        skipped: dict[str, str] = {}
        try:
            run_steps(recipe, ctx, source, force, skipped)
        except Exception as e:
            finished = any(run_dir.glob(f"*/{MANIFEST}"))
            if isinstance(e, CompressError) and created and main and not finished:
                # Bad input only a stage could see (e.g. drop_layers beyond the model's depth): when no step of this
                # new run finished, nothing is worth keeping, so exit 2 leaves nothing behind, run.log included.
                discard_run_folder(ctx.log, created)
            elif main:  # steps run in order: the one that failed is the first neither finished nor skipped
                failed = next(s.name for s in recipe.steps if s.name not in ctx.artifacts and s.name not in skipped)
                report_failure(recipe, ctx, skipped, failed, e)
            raise
        if not main:  # under torchrun / accelerate launch only rank 0 measures and reports
            return None
        report = report_run(recipe, ctx, skipped)
    gate = None
    if recipe.gate:
        rules = recipe.gate
        found = violations(report, rules.max_accuracy_drop, rules.artifacts, rules.allow_chance_baseline,
                           rules.min_score)
        for line in found:
            ctx.log.error("GATE FAILED: %s", line)
        if not found:
            ctx.log.info("gate passed (max drop %s)", recipe.gate.limits())
        gate = {"passed": not found, "violations": found, "limits": recipe.gate.limits()}
    return report | {"gate": gate}


def report_run(recipe: Recipe, ctx: Context, skipped: dict[str, str], failure: dict | None = None) -> dict:
    """Benchmark every finished step (cached rows reused) and write report.json, .md and .html."""
    artifacts = [a.to_json() for a in ctx.artifacts.values()]
    report = make_report(ctx.run_dir, recipe.name, recipe.baseline_step(), artifacts,
                         benchmark_rows(recipe, ctx, skipped), describe(),
                         recipe.gate.max_accuracy_drop if recipe.gate else None, failure)
    for warning in report["warnings"]:
        ctx.log.warning("%s", warning)
    ctx.log.info("report: %s", ctx.run_dir / "report.md")
    return report


def report_failure(recipe: Recipe, ctx: Context, skipped: dict[str, str], step: str, error: Exception) -> None:
    """The report of a run that stopped at `step`: the steps that finished, measured as usual, why it stopped (its
    first lines) and what the failed step measured before it gave up (StageFailed.metrics, e.g. a search's
    candidates). The exit code stays the failure's, so a report that cannot be made is only logged."""
    code = 2 if isinstance(error, CompressError) else 1
    reason = str(error) if isinstance(error, (CompressError, StageFailed)) else f"{type(error).__name__}: {error}"
    ctx.log.error("%s failed; reporting the %d step(s) that finished", step, len(ctx.artifacts))
    try:
        stage = next(s.type for s in recipe.steps if s.name == step)
        report_run(recipe, ctx, skipped, {"step": step, "stage": stage, "exit_code": code, "reason": reason,
                                          "metrics": getattr(error, "metrics", {})})
    except Exception as e:  # noqa: BLE001  (the run's own failure is what the user must see)
        ctx.log.error("the report of the failed run could not be written: %s: %s", type(e).__name__, e)
