"""The report: `build` makes report.json's content (rows, ratios, and the sections the run's stages declare through
compress.core.section), `blocks` turns it into headings, lists and tables, and `markdown`, `html` and `plots`
render those; `write.make_report` is the one place a report is made and written. Renderers import blocks, never the
other way round, and nothing here names a stage."""
