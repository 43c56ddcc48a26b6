"""One benchmark run: its inputs checked, its rows planned, measured and judged (run_benchmark)."""
