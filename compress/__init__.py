"""compress: staged compression and edge deployment for BERT/ALBERT text classifiers.

Layers, each importing only those below it: `compress.core` (artifacts, data, models, evaluation, the stage
registry), `runtimes`, then the stages (`compress.stages`, `export`), `benchmarks`, and on top `compress.recipe`,
`compress.pipeline` and the command-line entry points.

`compress.run_recipe(path_or_dict, out="runs")` is the Python API (compress.pipeline.run_recipe, the command's
own code path). It is looked up on first use: every lower layer imports `compress.core...`, which runs this file,
so importing the pipeline here would put the top layer under the bottom one (and torch behind `import compress`).
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run_recipe"]


def __getattr__(name: str) -> Any:
    if name == "run_recipe":
        return importlib.import_module("compress.pipeline").run_recipe
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
