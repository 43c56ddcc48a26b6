"""``python -m benchmarks.serve``: see ``benchmarks.serve.benchmark``."""
from alexnet_zoo.cli import run_cli

from benchmarks.serve.benchmark import main

run_cli(main)
