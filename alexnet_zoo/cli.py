"""The commands' conventions, shared by every CLI: one ``error: ...`` line and an exit code, never a traceback.

Kept free of torch and timm: ``python -m export.trt --check-only`` uses it.
"""
import argparse
import math
import os
import sys
from typing import Callable, Optional, Sequence, Tuple, Union


class UsageError(ValueError):
    """A mistake in how a command was called (exit 2); other user errors exit 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error: ...`` line and exit 2, like every other user error."""

    def error(self, message: str):
        print(f'error: {printable(message)} (see --help)', file=sys.stderr)
        sys.exit(2)

    def _get_values(self, action: argparse.Action, arg_strings: list):
        """``--seed=--``: argparse drops the ``--`` and takes no value at all (``[]``); refused like ``--seed --``."""
        if action.option_strings and action.nargs in (None, argparse.OPTIONAL) and arg_strings == ['--']:
            raise argparse.ArgumentError(action, 'expected one argument')
        return super()._get_values(action, arg_strings)


def first_line(error: BaseException, limit: int = 0) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors; characters
    a terminal would act on (escapes, carriage returns from a hostile file's names) are shown escaped."""
    text = str(error).strip()
    if text.startswith('Caught ') and 'Original Traceback' in text:  # PyTorch's DataLoader: the worker's error last
        text = text.splitlines()[-1].split(': ', 1)[-1]
    line = printable(text.split('\n')[0] if text else type(error).__name__)  # not splitlines(): it cuts at \r
    return line[:limit] if limit else line


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (a name read from a file can hold anything)."""
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MAX_BATCH = 4096  # the largest batch any command takes: past it, a typo (or an attack), not a plan
MAX_CLASSES = 100_000  # a classifier this wide is already 400 MB of weights
MAX_SEED = 2 ** 32 - 1


def bounded(kind: Callable = int, low: Optional[float] = None, high: Optional[float] = None,
            above: Optional[float] = None) -> Callable[[str], object]:
    """An argparse ``type``: a finite number of ``kind`` in [low, high] (and > ``above``); a usage error (exit 2)
    otherwise, before any work is done."""
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f'must be a finite number, got {text}')
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f'must be above {above}, got {text}')
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f'must be at least {low}, got {text}')
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f'must be at most {high}, got {text}')
        return value
    parse.__name__ = kind.__name__
    parse.bounds = (low, high, above)  # type: ignore[attr-defined]  (the tests check every numeric argument has some)
    return parse


def positive(kind: Callable = int, high: Optional[float] = None) -> Callable[[str], object]:
    """An argparse ``type`` that takes a number of ``kind`` above zero (and at most ``high``)."""
    return bounded(kind, high=high, above=0)


def seed() -> Callable[[str], object]:
    return bounded(int, 0, MAX_SEED)


def parse_list(text: Union[str, Sequence[str]], known: Sequence[str], what: str) -> Tuple[str, ...]:
    """``'a,b'`` -> ('a', 'b'), each checked against ``known``; a usage error otherwise."""
    items = [s.strip() for s in (text.split(',') if isinstance(text, str) else text) if str(s).strip()]
    if not items:
        raise UsageError(f'no {what} given')
    unknown = [s for s in items if s not in known]
    if unknown:
        raise UsageError(f'unknown {what}: {", ".join(map(repr, unknown))} (choose from {", ".join(known)})')
    return tuple(dict.fromkeys(items))


def parse_sizes(text: Union[str, Sequence[int]], what: str, high: int, high_name: str = None,
                low: int = 1) -> Tuple[int, ...]:
    """``'32,1,32'`` -> (1, 32): whole numbers from ``low`` (1) to ``high`` (named ``high_name`` in the message
    where it is another option's value); a usage error otherwise."""
    items = [s.strip() for s in text.split(',')] if isinstance(text, str) else list(text)
    sizes = set()
    for item in filter(lambda s: str(s).strip(), items):
        try:
            size = int(item)
        except (TypeError, ValueError):
            raise UsageError(f'{what} must be a whole number, got {item!r}') from None
        if not low <= size <= high:
            raise UsageError(f'{what} must be {low} to {high_name or high}, got {size}')
        sizes.add(size)
    if not sizes:
        raise UsageError(f'no {what} given')
    return tuple(sorted(sizes))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --num-classes and --checkpoint | --pretrained, as every command that takes a model spells them."""
    parser.add_argument('--model', default='alexnet_bn', help='timm model name (default: alexnet_bn)')
    parser.add_argument('--num-classes', type=positive(int, MAX_CLASSES), default=None,
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
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit as an ignored exception
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
