"""A folder of files that belong together (a training run, a report), saved as one state.

Every file of a save is written into ``FOLDER/.staging/`` (or, for a folder whose every subfolder another program
reads, a Triton model repository, beside it: ``.FOLDER.staging/`` in its parent); then a manifest listing every file of the new set with
its SHA-256 (files the save did not change included) is written there; then the files are moved into place and
the manifest last. A save interrupted before its staged manifest exists changed nothing in the folder (the next
save discards the staging folder); one interrupted while moving is finished by ``recover`` (roll forward: the
staged set is complete). A reader checks files against ``FOLDER/manifest.json`` and refuses a mix in one line.
Saves, recoveries and checks take an exclusive lock on ``FOLDER/.lock`` (where the folder is writable), so a
reader never finishes a save that its writer is still finishing, nor hashes files while they are moved. Staged
files are flushed to disk (fsync) before the staged manifest is written.

That lock is a plain ``flock``: ``filelock``'s ``FileLock`` would lock the same file, but where none can be made (a
read-only folder, another user's report) it fails, and a reader must still check the files there, without a lock;
on a file system without ``flock`` it falls back to marker files of its own.

Kept free of torch: reports use it too.
"""
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

from .files import PathLike, disk_full, write_text_atomic

MANIFEST = 'manifest.json'
STAGING = '.staging'
LOCK = '.lock'
RUN_KIND = 'training run'  # the manifest's 'kind' in a training run's folder


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder's saves and checks (POSIX ``flock``); none where it cannot be taken (a
    read-only folder, or no ``fcntl``): then nothing can save there either."""
    try:
        import fcntl
        handle = open(folder / LOCK, 'a')
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a folder on a file system that does not sync directories
        pass
    finally:
        os.close(fd)


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def staging_dirs(folder: Path) -> Tuple[Path, Path]:
    """Where a save of ``folder`` may stage: inside it, or beside it (``outside``)."""
    return folder / STAGING, folder.parent / f'.{folder.name}{STAGING}'


def save_set(folder: PathLike, write: Callable[[Path], None], about: Optional[dict] = None,
             keep: Iterable[str] = (), outside: bool = False) -> dict:
    """``write(staging)`` writes the new files (paths relative to the folder); ``keep`` names files already in the
    folder that belong to the new set unchanged; ``outside`` stages beside the folder, so that nothing but the
    set's own files is ever inside it (a model repository's server reads every subfolder). Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = staging_dirs(folder)[outside]
    with locked(folder):
        for earlier in staging_dirs(folder):
            if (earlier / MANIFEST).is_file():
                _commit(folder, earlier)  # an earlier save staged completely: finish it first (its errors are ours)
            shutil.rmtree(earlier, ignore_errors=True)  # an earlier save that never reached its manifest
        staging.mkdir()
        try:
            write(staging)
            staged = [p for p in sorted(staging.rglob('*')) if p.is_file() and not p.name.startswith('.')]
            files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in staged}
            for name in keep:
                if name not in files:
                    files[name] = sha256_file(folder / name)
            for path in [*staged, *{p.parent for p in staged}]:
                _fsync(path)  # the data is on disk before the manifest that vouches for it
            manifest = {**(about or {}), 'files': files}
            write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2) + '\n')
        except BaseException as e:
            cause = disk_full(e, folder) if isinstance(e, Exception) else e
            shutil.rmtree(staging, ignore_errors=True)
            if cause is not e:
                raise cause from None
            raise
        _commit(folder, staging)
    return manifest


def _commit(folder: Path, staging: Path) -> None:
    """Move a staged set into place, manifest last. Safe to repeat: files already moved are skipped."""
    staged = json.loads((staging / MANIFEST).read_text())
    for name in staged['files']:
        source = staging / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, folder / name)
    os.replace(staging / MANIFEST, folder / MANIFEST)
    _fsync(folder)
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: PathLike) -> bool:
    """Finish a save that was interrupted while moving its files into place; True if there was one."""
    folder = Path(folder)
    if not _pending(folder):
        return False
    with locked(folder):
        staging = _pending(folder)
        if not staging:  # finished by another process meanwhile
            return False
        try:
            _commit(folder, staging)
        except OSError:  # a read-only folder: verify() names the pending save
            return False
    return True


def _pending(folder: Path) -> Optional[Path]:
    """The staging folder of a save that staged completely but did not finish moving, if any."""
    return next((staging for staging in staging_dirs(folder) if (staging / MANIFEST).is_file()), None)


def read_manifest(folder: PathLike) -> Optional[dict]:
    """``FOLDER/manifest.json``, or None for a folder saved before manifests; one clear line if it is broken."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get('files'), dict):
            raise ValueError('no files listed')
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f'{path} is not a manifest ({e})') from None
    return manifest


def verify(folder: PathLike, names: Optional[Iterable[str]] = None) -> Optional[dict]:
    """The folder's manifest, after checking that each of ``names`` (default: every listed file) is the file it
    lists; None for a folder without a manifest. A save interrupted while moving is finished first."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() and not _pending(folder):
        return None  # not a folder saved as a set: nothing to check, and nothing written (no lock file)
    recover(folder)
    with locked(folder):
        manifest = read_manifest(folder)
        if manifest is None:
            return None
        pending = _pending(folder)
        files: Dict[str, str] = manifest['files']
        for name in (files if names is None else [n for n in names if n in files]):
            path = folder / name
            if not path.is_file():
                raise ValueError(f'{folder}: {name} is missing (its {MANIFEST} lists it)')
            if sha256_file(path) != files[name]:
                if pending:
                    raise ValueError(f'{folder}: a save was interrupted while moving its files into place and could '
                                     f'not be finished here (no write access?); its new files wait in {pending}/')
                raise ValueError(f'{folder}: {name} does not belong with the other files (it is not the one its '
                                 f'{MANIFEST} lists: written by another save, or changed since)')
    return manifest
