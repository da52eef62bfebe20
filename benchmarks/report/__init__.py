"""The report: `build` makes report.json's content, `blocks` turns it into sections of headings, lists and
tables, and `markdown`, `html` and `plots` render those; `write` puts every file on disk. Renderers import
blocks, never the other way round."""
