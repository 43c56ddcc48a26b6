"""What an export writes beside its graphs, and how: each graph judged before it is renamed into place,
export.json last, int8's calibration file and per-layer diagnosis."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import onnx

from alexnet_zoo.files import atomic_path, write_bytes_atomic
from alexnet_zoo.manifest import sha256_file

from export.contract import CALIBRATION_FILE
from export.int8.diagnose import DIAGNOSIS_VIEWS
from export.int8.diagnose import render as render_diagnosis
from export.export_manifest import write_export_manifest
from export.int8.remedy import Int8Result
from export.int8.nncf_int8 import format_comparison
from export.parity import judge
from export.int8.uint8 import cpu_graph
from export.views import ParityViews, ort_ms_b1, run_onnx

if TYPE_CHECKING:
    from export.onnx.graphs import ExportResult


def record_export(output_dir: Path, result: ExportResult, weights: str, settings: dict) -> None:
    """export.json, last: the files this export wrote (hashed as written, before their rename) and its settings."""
    written = {}
    for r in (r for r in result.rows if r['passed'] is not False):
        entry = {'precision': r['precision'], 'weights_sha256': weights, 'settings': settings}
        written[r['file']] = {**entry, 'sha256': r['sha256'], **_pick(r, 'int8_settings')}
        if r.get('calibration_sha256'):
            written[CALIBRATION_FILE] = {**entry, 'sha256': r['calibration_sha256']}
    if written:  # nothing new: the folder's export.json stays as it is
        write_export_manifest(output_dir, written)


def _pick(row: dict, key: str) -> dict:
    """``{key: row[key]}`` where the row has a value there, else nothing (to spread into a record)."""
    return {key: row[key]} if row.get(key) else {}


def checkpoint_sha256(source: str) -> Optional[str]:
    """The checkpoint file's hash (a Hugging Face layout folder: its model.safetensors); None without a file."""
    path = Path(source)
    path = path / 'model.safetensors' if path.is_dir() else path
    return sha256_file(path) if path.is_file() else None


def write_checked(graph: onnx.ModelProto, path: Path, precision: str, views: ParityViews, trained: bool,
                  failed_dir: Optional[Path] = None) -> dict:
    """Write beside ``path``, run the written file in ONNX Runtime, judge it, and rename it into place unless it
    fails its gate (then into ``failed_dir`` if given). A failed gate also removes a stale ``path``."""
    row = {'precision': precision, 'file': path.name}
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(graph, str(tmp))
            row['size_bytes'] = tmp.stat().st_size
            row['sha256'] = sha256_file(tmp)  # the bytes this export wrote, whatever replaces the file later
            source = cpu_graph(tmp, precision)  # int8: what ONNX Runtime and OpenVINO run (export.int8.uint8)
            row.update(views.figures(run_onnx(source, views.x)))
            row.update(judge(precision, row, trained))
            row['ms_b1'] = ort_ms_b1(source, views.x)
            if precision == 'int8':  # the file as it is: symmetric, TensorRT's form (its engine is judged apart)
                row['symmetric_sqnr_db'] = views.figures(run_onnx(tmp, views.x))['sqnr_db']
            if row['passed'] is False:
                if failed_dir is not None:
                    os.replace(tmp, failed_dir / path.name)
                raise _GateFailed()
    except _GateFailed:
        path.unlink(missing_ok=True)
    return row


class _GateFailed(Exception):
    """Internal: unwinds atomic_path so that the temporary file is removed, not renamed."""


def write_int8_extras(int8: Int8Result, output_dir: Path, row: dict, views: ParityViews, result: ExportResult,
                      calibration: dict) -> None:
    """model.int8.calibration.json (ranges to reuse), and the per-layer diagnosis when there is one; the plain
    int8 graph's speed beside a remedied one's."""
    about = {'source': calibration['source'], 'crops': calibration['crops'], 'equalized': int8.equalized}
    ranges = int8.quantizer.calibration_file(about)
    write_bytes_atomic(output_dir / CALIBRATION_FILE, ranges)
    row['calibration_sha256'] = hashlib.sha256(ranges).hexdigest()  # for export.json
    if int8.float_layers or int8.equalized:  # what the remedy costs: the plain int8 graph's speed beside it
        row['plain_ms_b1'] = ort_ms_b1(cpu_graph(int8.plain, 'int8'), views.x)
    if int8.diagnosis:
        result.diagnosis = int8.diagnosis
        summary = (f'{views.description}. Gate: {"pass" if row["passed"] else "FAIL"}; tried: '
                   + '; '.join(f'{a["what"]} ({a["sqnr_db"]:.1f} dB, {"pass" if a["passed"] else "fail"})'
                               for a in int8.attempts))
        files = render_diagnosis(int8.diagnosis, {'summary': summary, 'views': DIAGNOSIS_VIEWS,
                                                  'attempts': int8.attempts, **_pick(row, 'compared')})
        if row.get('compared'):
            files['.md'] += f'\n```\n{format_comparison(row["compared"])}\n```\n'.encode()
        for suffix, data in files.items():
            write_bytes_atomic(output_dir / f'model.int8.layers{suffix}', data)
