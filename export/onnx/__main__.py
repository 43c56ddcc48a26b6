"""``python -m export.onnx``: see ``export.onnx``."""
from alexnet_zoo.cli import run_cli

from export.onnx.cli import main

run_cli(main)
