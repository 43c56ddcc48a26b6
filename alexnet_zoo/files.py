"""Writing files so that a reader never meets half of one: a temporary file beside the target, then a rename.

A temporary file (``.NAME.PID.XXXX.tmp``) is locked (``flock``) by its writer while it is written: the next writer
in the folder removes the unlocked ones (left by a writer that was killed: the kernel drops a dead process's
locks), never one still being written, whether its writer runs here, in another container or on another host of a
shared file system that supports locks. The ``filelock`` package cannot do this job: its ``FileLock`` locks a
separate lock file, not the temporary itself, so a killed writer would leave a second file behind that says
nothing about the first; here the lock is one ``flock`` on the descriptor ``mkstemp`` returned.

A full disk is one line naming the file that did not fit. Kept free of torch and timm: the light paths (the
TensorRT preflight, reading a graph's metadata) use it.
"""
import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Union

PathLike = Union[str, 'os.PathLike[str]']
_TEMP = re.compile(r'^\..+\.\d+\.[^.]+\.tmp$')
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No space left where a file was being written; the message names the file (one clear line)."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full(error: BaseException, path: PathLike) -> BaseException:
    """``error`` as a DiskFullError naming ``path`` when it is a full disk, else as is. Libraries say so in many
    ways (OSError's errno, safetensors' ``StorageFull``, torch's "file write failed"), so a failed write on a file
    system left with under 1 MiB counts as full too."""
    if isinstance(error, DiskFullError):
        return error
    text = str(error)
    full = (isinstance(error, OSError) and error.errno in FULL) or any(
        words in text for words in ('No space left on device', 'StorageFull', 'Disk quota exceeded'))
    if not full and isinstance(error, (OSError, RuntimeError)):  # an I/O failure, not the caller's own exception
        try:
            stat = os.statvfs(path if Path(path).is_dir() else Path(path).parent)
            full = stat.f_bavail * stat.f_frsize < 1 << 20
        except OSError:
            pass
    return DiskFullError(errno.ENOSPC, f'no space left on device writing {path}') if full else error


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Anything that fails or is interrupted inside the block leaves neither ``path`` nor the temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.{os.getpid()}.', suffix='.tmp', dir=path.parent)
    _lock(fd)  # held until the file is renamed or removed: a sweeping writer leaves it alone
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except Exception as e:
            cause = disk_full(e, path)
            if cause is e:
                raise
            raise cause from None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def _lock(fd: int) -> None:
    with contextlib.suppress(ImportError, OSError):  # no fcntl (Windows), or a file system without locks
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def _abandoned(path: Path) -> bool:
    """Whether nobody holds the temporary file's lock (its writer is gone); False where locks cannot be taken."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # locked: a writer is still at work
        return False
    finally:
        os.close(fd)


def stale_temporaries(folder: PathLike) -> List[Path]:
    """Temporary files in ``folder`` whose writer is gone (killed before it could remove them)."""
    found = []
    with contextlib.suppress(OSError):
        for path in Path(folder).iterdir():
            if _TEMP.match(path.name) and path.is_file() and _abandoned(path):
                found.append(path)
    return found


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    removed = stale_temporaries(folder)
    for path in removed:
        with contextlib.suppress(OSError):
            path.unlink()
    return removed


def check_writable_dir(path: PathLike) -> None:
    """One clear line before minutes of work when ``path`` cannot become a folder to write in; creates nothing (a
    command refused later, for another input, leaves no folder behind)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PermissionError(f'output directory not writable: {path} ({existing} is not a folder)')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f'output directory not writable: {path} (permission denied)')


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` if needed, check that files can be written in it (one clear line if not), and remove the
    temporary files that killed writers left there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=f'.write-test.{os.getpid()}.', suffix='.tmp') as probe:
            _lock(probe.fileno())
    except OSError as e:
        raise PermissionError(f'output directory not writable: {path} ({e.strerror or e})') from None
    remove_stale_temporaries(path)
    return path
