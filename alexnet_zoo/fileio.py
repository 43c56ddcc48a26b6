"""Atomic file writing and the commands' one-line error convention, shared by every CLI."""
import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union


class UsageError(ValueError):
    """A mistake in how a command was called (exit 2); other user errors exit 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error: ...`` line and exit 2, like every other user error."""

    def error(self, message: str):
        print(f'error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Anything that fails or is interrupted inside the block leaves neither ``path`` nor the temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def ensure_writable_dir(path: Union[str, Path]) -> Path:
    """Create ``path`` if needed and check that files can be written in it; one clear line if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix='.write-test-'):
            pass
    except OSError as e:
        raise PermissionError(f'output directory not writable: {path} ({e.strerror or e})') from None
    return path


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
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'error: {message}', file=sys.stderr)
        code = 2 if isinstance(e, UsageError) else 1
    sys.exit(code)
