"""What every stage shares: the registry and the run context.

A stage is one config class (or a union of variants, as quantize's methods) plus one function, registered
together (the torchao idiom): the recipe schema, `--dry-run` and the dispatcher all read the same table. A stage
with figures worth showing registers them too: its metrics model and its report section (compress.core.section).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, get_args

from compress.core.artifact import Artifact, ArtifactKind
from compress.core.config import StepConfig
from compress.core.data import DataConfig, Dataset, load_dataset
from compress.core.section import Metrics, SectionFn
from compress.core.task import DEFAULT_TASK, Task


@dataclass
class StageResult:
    kind: ArtifactKind
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a stage gets besides its config and input: the run-wide settings it needs, the data (loaded and split
    once, on first use) and the artifacts of the steps before it."""

    run_dir: Path
    log: logging.Logger
    data_config: DataConfig
    seed: int = 0
    eval_batch_size: int = 64  # batch of every accuracy pass (dev evaluation, parity)
    allow_pickle: bool = False  # the recipe's model.allow_pickle: also for checkpoints the run wrote itself
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    task: Task = DEFAULT_TASK  # the recipe's task: which head finetune puts on, which data the source must hold
    allow_chance: bool = False  # the recipe's gate.allow_chance_baseline: a fine-tuned model at chance is expected
    # Teacher outputs distillations may share, by teacher artifact hash: a search sets it while its candidates run
    # (they learn from one teacher on one text), so the teacher runs once per text, not once per candidate.
    teacher_outputs: dict[str, dict] | None = None

    @property
    def max_length(self) -> int:
        return self.data_config.max_length

    @cached_property
    def data(self) -> Dataset:
        return load_dataset(self.data_config, seed=self.seed, task=self.task)


StageFn = Callable[[Any, Artifact, Context, Path], StageResult]


@dataclass(frozen=True)
class StageSpec:
    config: Any  # a StepConfig subclass, or an annotated union of them (one per variant)
    run: StageFn
    accepts: tuple[ArtifactKind, ...]
    produces: ArtifactKind
    metrics: type[Metrics] = Metrics  # what its manifest metrics hold, as its section reads them
    section: SectionFn | None = None  # its report section(s), from its steps' metrics


STAGES: dict[str, StageSpec] = {}


def step_classes(config: Any) -> list[type[StepConfig]]:
    """The config classes behind a stage's config: the class itself, or every member of a union of variants."""
    if isinstance(config, type) and issubclass(config, StepConfig):
        return [config]
    return [c for arg in get_args(config) for c in step_classes(arg)]


def register(config: Any, accepts: tuple[ArtifactKind, ...], produces: ArtifactKind,
             metrics: type[Metrics] = Metrics, section: SectionFn | None = None) -> Callable[[StageFn], StageFn]:
    """Bind a step config (whose `type` literal names the stage) to the function that runs it, and to what the
    report shows of it: `section(steps, measured)` from its steps' `metrics`."""

    def bind(fn: StageFn) -> StageFn:
        name = step_classes(config)[0].model_fields["type"].default
        STAGES[name] = StageSpec(config, fn, accepts, produces, metrics, section)
        return fn

    return bind
