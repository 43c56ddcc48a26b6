"""``python -m export.triton``: see ``export.triton.repository``."""
from alexnet_zoo.cli import run_cli

from export.triton.repository import main

run_cli(main)
