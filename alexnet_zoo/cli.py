"""The commands' conventions, shared by every CLI: one ``error: ...`` line and an exit code, never a traceback.

Kept free of torch and timm: ``python -m export.trt --check-only`` uses it.
"""
import argparse
import os
import sys
from typing import Callable, Sequence


class UsageError(ValueError):
    """A mistake in how a command was called (exit 2); other user errors exit 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error: ...`` line and exit 2, like every other user error."""

    def error(self, message: str):
        print(f'error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


def first_line(error: BaseException, limit: int = 0) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:limit] if limit else line


def positive(kind: Callable = int) -> Callable[[str], object]:
    """An argparse ``type`` that takes a number of ``kind`` above zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    parse.__name__ = kind.__name__
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --num-classes and --checkpoint | --pretrained, as every command that takes a model spells them."""
    parser.add_argument('--model', default='alexnet_bn', help='timm model name (default: alexnet_bn)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help="classifier size (default: a checkpoint directory's, else the model's: 1000)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', help='.safetensors, .pth (weights only) or a timm Hugging Face layout '
                                              'directory, which brings its own model name, classes and label names')
    weights.add_argument('--pretrained', action='store_true', help="weights from the model's pretrained cfg")


def run_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str] = None,
            errors: tuple = (ValueError, OSError, RuntimeError, KeyError)) -> None:
    """Run ``main`` and exit with its code; a user's mistake prints one ``error: ...`` line, no traceback.

    UsageError exits 2, the other expected errors exit 1, Ctrl-C exits 130. Set ALEXNET_ZOO_DEBUG=1 for tracebacks.
    """
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        code = 130
    except errors as e:
        if os.environ.get('ALEXNET_ZOO_DEBUG'):
            raise
        print(f'error: {first_line(e)}', file=sys.stderr)
        code = 2 if isinstance(e, UsageError) else 1
    sys.exit(code)
