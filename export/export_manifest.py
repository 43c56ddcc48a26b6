"""``export.json``: which graphs an export wrote into a folder, and the check every reader makes before using them.

``export.onnx`` writes it last, after the graphs; ``export.trt``, ``export.triton.repository`` and the benchmark refuse a
graph it does not vouch for. Imports neither torch nor timm.
"""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from alexnet_zoo.cli import first_line
from alexnet_zoo.files import PathLike, write_text_atomic
from alexnet_zoo.manifest import locked, sha256_file

from export.contract import FILENAMES

EXPORT_MANIFEST = 'export.json'  # what export.onnx wrote into a folder: each file's sha256, weights and settings


def write_export_manifest(folder: PathLike, written: Dict[str, dict]) -> dict:
    """Record ``written`` (file name -> its sha256, the weights' hash and the export's settings) in the folder's
    ``export.json``, atomically and after the files, keeping the entries of earlier exports of the same weights
    whose files are still the ones they list. Two exports into one folder at once can then leave files of both,
    but never a manifest that vouches for a file it did not write: readers (``check_export``) notice the mix."""
    folder = Path(folder)
    with locked(folder):
        try:
            kept = read_export_manifest(folder)['files']
        except (FileNotFoundError, ValueError):
            kept = {}
        weights = {entry.get('weights_sha256') for entry in written.values()} or {None}
        files = {name: entry for name, entry in kept.items() if name not in written
                 and entry.get('weights_sha256') in weights  # one folder, one set of weights
                 and (folder / name).is_file() and sha256_file(folder / name) == entry.get('sha256')}
        manifest = {'kind': 'export', 'files': {**files, **written}}
        write_text_atomic(folder / EXPORT_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    return manifest


def read_export_manifest(folder: PathLike) -> dict:
    path = Path(folder) / EXPORT_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f'{Path(folder)} has no {EXPORT_MANIFEST}: its graphs were not written by this '
                                f'version of export.onnx (or were copied in by hand); export them again there')
    try:
        manifest = json.loads(path.read_text())
        files = manifest['files']
        if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get('sha256'), str)
                                                  for e in files.values()):
            raise ValueError('files must map names to entries with a sha256')
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not an export manifest ({first_line(e, 120)})') from None
    return manifest


def exported_graphs(folder: PathLike, precisions: Sequence[str]) -> Tuple[Dict[str, Path], Optional[dict]]:
    """The graphs export.onnx wrote in ``folder`` for ``precisions`` (an absent one left out), checked against the
    folder's ``export.json`` (see ``check_export``), and that manifest (None when no graph is there)."""
    folder = Path(folder)
    graphs = {p: folder / FILENAMES[p] for p in precisions if (folder / FILENAMES[p]).is_file()}
    return graphs, check_export(list(graphs.values()))


def check_export(graphs: Sequence[PathLike], required: bool = True) -> Optional[dict]:
    """Check ``graphs`` (files of one folder) against that folder's ``export.json`` before they are used: each
    listed and the very file it lists, all of the same weights. Without a manifest: an error when ``required``,
    else None (a single graph from another tool)."""
    paths = [Path(g) for g in graphs]
    if not paths:
        return None
    folder = paths[0].parent
    if not required and not (folder / EXPORT_MANIFEST).is_file():
        return None
    manifest = read_export_manifest(folder)
    files = manifest['files']
    for path in paths:
        entry = files.get(path.name)
        if entry is None:
            raise ValueError(f'{path} is not listed in {folder / EXPORT_MANIFEST}: not written by the export that '
                             f'wrote the others (an export was interrupted, or two ran at once); export again')
        if sha256_file(path) != entry['sha256']:
            raise ValueError(f'{path} is not the file {folder / EXPORT_MANIFEST} lists (written by another export '
                             f'at the same time, or changed since); export again')
    weights = {files[p.name].get('weights_sha256') for p in paths}
    if len(weights) > 1:
        raise ValueError(f'the graphs in {folder} come from different weights ({len(weights)} checkpoints); '
                         f'export them again from one')
    return manifest
