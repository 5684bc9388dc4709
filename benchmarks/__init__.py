"""Benchmarks (not tests): ``python -m benchmarks.norms`` and ``python -m benchmarks.inference``.

Each prints markdown tables of times as ratios to a baseline measured side by side in the same process
(interleaved repeats, median), and a last ``summary:`` line. Results are recorded in docs/benchmarks.md.
"""
