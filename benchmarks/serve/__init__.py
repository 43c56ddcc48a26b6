"""Serving benchmark (python -m benchmarks.serve): Triton in-process, the load, the sweep, perf_analyzer, the report."""
