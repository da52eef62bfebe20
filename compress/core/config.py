"""The base classes of every recipe section, and what a step may check about the rest of the recipe."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass(frozen=True)
class RecipeShapes:
    """The shapes the recipe will ask of the models it makes, each under the recipe field it comes from
    (e.g. "data.max_length": 64, "benchmark.sequence_lengths": 128). Steps check these at validation time
    without importing the recipe, which imports every step."""

    sequence_lengths: dict[str, int]  # longest token sequence fed to a model (training, evaluation, latency)
    batch_sizes: dict[str, int]  # largest batch fed to a model
    positions: dict[str, int]  # positions a checkpoint's config must cover: the fed lengths, and the report's MACs


@dataclass(frozen=True)
class Architecture:
    """What the recipe knows of a step's input model before anything runs: config.json's model_type, ALBERT's
    layer sharing (num_hidden_groups, inner_group_num) and the kind of tokenizer, followed step by step from the
    source's folder.
    Why: a step that cannot take its input (prune on a many-group ALBERT) must fail at validation, not after the
    steps before it have trained for an hour."""

    model_type: str
    sharing: tuple[int, int] = (1, 1)
    tokenizer: str | None = None  # its fast tokenizer's model (WordPiece, Unigram, BPE), or why there is none

    @classmethod
    def of(cls, config: dict, tokenizer: str | None = None) -> Architecture:
        return cls(config["model_type"], (config.get("num_hidden_groups", 1), config.get("inner_group_num", 1)),
                   tokenizer)

    def __str__(self) -> str:
        groups, inner = self.sharing
        return self.model_type if self.sharing == (1, 1) else \
            f"{self.model_type} (num_hidden_groups={groups}, inner_group_num={inner})"


class StepConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Folder and report name of the artifact.")
    from_: str | None = Field(None, alias="from", description="Input step, or 'source' for the recipe's model; default: the previous step.")

    def references(self) -> dict[str, str]:
        """Earlier hf-checkpoint steps this step reads besides its input, by field (e.g. a distillation teacher)."""
        return {}

    def check_shapes(self, shapes: RecipeShapes) -> None:
        """Raise ValueError when this step cannot serve the shapes the recipe will feed it (e.g. too few positions)."""

    def check_architecture(self, given: Architecture) -> None:
        """Raise ValueError when this step cannot take an input model of this architecture."""

    def output_architecture(self, given: Architecture) -> Architecture:
        """The architecture of this step's output; most steps keep their input's (distill's albertize does not)."""
        return given
