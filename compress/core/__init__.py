"""What every stage, runtime and benchmark shares: errors, artifacts, data, models, evaluation, the stage registry.

Nothing here imports a stage, the recipe, the pipeline or a benchmark."""
