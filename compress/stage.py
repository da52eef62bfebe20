"""What every stage shares: its config base class, the registry and the run context.

A stage is one config class plus one function, registered together (the torchao idiom):
the recipe schema, `--dry-run` and the dispatcher all read the same table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import Artifact, ArtifactKind

if TYPE_CHECKING:
    from compress.data import Dataset
    from compress.recipe import Recipe


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StepConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Folder and report name of the artifact.")
    from_: str | None = Field(None, alias="from", description="Input step, or 'source' for the recipe's model; default: the previous step.")

    def references(self) -> dict[str, str]:
        """Earlier hf-checkpoint steps this step reads besides its input, by field (e.g. a distillation teacher)."""
        return {}

    def check_recipe(self, recipe: Recipe) -> None:
        """Raise ValueError when this step does not fit the rest of the recipe (e.g. lengths it must cover)."""


@dataclass
class StageResult:
    kind: ArtifactKind
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    log: logging.Logger
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    @cached_property
    def data(self) -> Dataset:
        from compress.data import load_dataset

        return load_dataset(self.recipe.data, seed=self.recipe.seed)


StageFn = Callable[[Any, Artifact, Context, Path], StageResult]


@dataclass(frozen=True)
class StageSpec:
    config: type[StepConfig]
    run: StageFn
    accepts: tuple[ArtifactKind, ...]
    produces: ArtifactKind


STAGES: dict[str, StageSpec] = {}


def register(
    config: type[StepConfig], accepts: tuple[ArtifactKind, ...], produces: ArtifactKind
) -> Callable[[StageFn], StageFn]:
    """Bind a step config class (whose `type` literal names the stage) to the function that runs it."""

    def bind(fn: StageFn) -> StageFn:
        STAGES[config.model_fields["type"].default] = StageSpec(config, fn, accepts, produces)
        return fn

    return bind
