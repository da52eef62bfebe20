"""What a stage shows in the report, declared beside the stage: the figures it measures (a `Metrics` model: its
manifest metrics as the report reads them) and how they read (`Section`s: a title, lines, a table, a plot).

The report (benchmarks.report) calls each stage's section function with the run's steps of that stage, stores
what it returns in report.json and renders it; it names no stage, so a stage with figures worth showing needs
no edit outside its own files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ConfigDict

MARK = "★ "  # a table row whose first cell starts so is the one its section picks (report.html highlights it)


class Metrics(BaseModel):
    """A stage's manifest metrics as its section reads them: the keys it declares, typed, checked when the stage
    finishes; the stage's other figures stay in the manifest as they are."""

    model_config = ConfigDict(extra="allow")


class Table(BaseModel):
    css: str  # the table's class in report.html
    head: list[str]
    rows: list[list[str]]


class Point(BaseModel):
    x: float
    y: float
    label: str
    colour: str = "#1f77b4"
    star: bool = False  # the point its section picks: a large star, its label in bold


class Panel(BaseModel):
    """One pair of axes: the points (the Pareto front among them drawn as a step line, only its points and the
    starred one named) and, where given, a dashed horizontal line with its legend (a budget)."""

    x_label: str
    points: list[Point]
    line: tuple[float, str] | None = None


class Plot(BaseModel):
    file: str  # its PNG's file name in the run folder, also its key: unique in a report
    title: str
    y_label: str  # shared by the panels, side by side
    panels: list[Panel]


class Section(BaseModel):
    title: str
    lines: list[str] = []
    table: Table | None = None
    plot: Plot | None = None


@dataclass
class Ran:
    """One step of the stage as the report has it: finished, or the step the run failed at (with what it measured
    before it stopped; then `parent` is None)."""

    name: str
    parent: str | None
    metrics: Metrics


@dataclass
class Measured:
    """What the benchmarks measured, for a section that sets the stage's own figures beside the test split's."""

    scores: dict[tuple[str, str], float]  # test score by (artifact, back end): the measured rows, in report order
    label: Callable[[str], str]  # a score's name as readers know it: "entity_f1" -> "entity F1"


SectionFn = Callable[[list[Ran], Measured], list[Section]]
