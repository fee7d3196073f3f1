"""The on-board benchmark: runs every method on a board (run.py) and renders BENCHMARKS.md from
its JSON (report.py)."""
