"""compress: staged compression and edge deployment for BERT/ALBERT text classifiers.

Layers, each importing only those below it: `compress.core` (artifacts, data, models, evaluation, the stage
registry), `runtimes`, then the stages (`compress.stages`, `export`), `benchmarks`, and on top `compress.recipe`,
`compress.pipeline` and the command-line entry points.
"""
