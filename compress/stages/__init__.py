"""The transforming stages, one file per recipe step `type` (a search's report section in search_report.py).
`compress.stages.registry` imports them all, with export's (importing a stage registers it)."""
