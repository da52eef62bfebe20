"""The transforming stages, one file per recipe step `type`. `compress.recipe` is the one module that imports
them all (importing a stage registers it)."""
