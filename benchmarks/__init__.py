"""Accuracy, size and latency measurement, the report, and CI comparisons."""
