"""export_onnx: the order of work of one export, precision by precision (the module docstring of ``export.onnx``
says what it promises)."""
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import onnx

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.cli import UsageError
from alexnet_zoo.data import data_config
from alexnet_zoo.files import PathLike, check_writable_dir, ensure_writable_dir

from export.int8.calibration import calibration_crops
from export.contract import DEFAULT_OPSET, FILENAMES, GRAPH_PRECISIONS, MAX_OPSET, MIN_OPSET, check_graph, set_metadata
from export.int8.remedy import Int8Result, int8_settings, make_int8, parse_fallback
from export.int8.nncf_int8 import compare_with_nncf
from export.parity import gate_failure
from export.int8.quantizer import CALIBRATION_METHODS, DEFAULT_METHOD, read_calibration_record
from export.onnx.fp16 import to_fp16
from export.onnx.torch_export import base_metadata, torch_to_onnx
from export.trt.preflight import zero_point_problems
from export.views import ParityViews
from export.onnx.written import checkpoint_sha256, record_export, write_checked, write_int8_extras

Progress = Optional[Callable[[str], None]]


class ParityGateError(RuntimeError):
    """A precision failed its parity gate; ``result`` holds every row (the failed ones were not written)."""

    def __init__(self, message: str, result: 'ExportResult'):
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    paths: Dict[str, Path] = field(default_factory=dict)  # precision -> written file
    rows: List[dict] = field(default_factory=list)  # per precision: file, size, opset, seconds, parity, verdict
    trained: bool = False  # gates judged
    parity_images: str = ''
    calibration: str = ''
    seconds: float = 0.0
    diagnosis: List[dict] = field(default_factory=list)  # int8 per-layer rows, worst first (when diagnosed)
    failed_paths: Dict[str, Path] = field(default_factory=dict)  # precision -> graph that failed, kept in failed_dir


def export_onnx(
        loaded: LoadedModel,
        output_dir: PathLike,
        precisions: Sequence[str] = GRAPH_PRECISIONS,
        calibration_images: Optional[PathLike] = None,
        calibration_method: str = DEFAULT_METHOD,
        opset: int = DEFAULT_OPSET,
        softmax: bool = False,
        progress: Progress = None,
        parity_images: Optional[PathLike] = None,
        int8_fallback: Union[str, Sequence[str]] = 'auto',
        explain: bool = False,
        calibration_cache: Optional[PathLike] = None,
        failed_dir: Optional[PathLike] = None,
) -> ExportResult:
    """Export ``loaded`` to ONNX in each of ``precisions`` under ``output_dir``; returns paths and parity rows.

    Parity is judged on ``parity_views`` (at least 256: the photographs', or ``parity_images``', centre crops plus
    random crops and flips). int8: see ``export.int8.remedy`` for ``int8_fallback`` and ``explain``; its ranges are
    written to ``model.int8.calibration.json``, which ``calibration_cache`` reads back instead of calibrating.
    A graph that fails its gate is not written to ``output_dir`` (a stale one is removed); with ``failed_dir``
    it is written there, for a benchmark to measure. Raises ValueError / FileNotFoundError / PermissionError
    (one line) before writing anything when an argument is wrong, and ParityGateError after the run when a
    trained model's graph missed its gate.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    precisions = parse_precisions(precisions)
    fallback = _check_arguments(opset, calibration_method, int8_fallback, calibration_cache, output_dir)
    # a file that is not a calibration record fails here, with the cheap checks, before the crops and views
    record = read_calibration_record(calibration_cache) if calibration_cache and 'int8' in precisions else None
    job = _Job(loaded, loaded.model.eval(), say, ExportResult(trained=loaded.trained), fallback, explain,
               Path(calibration_cache) if calibration_cache else None)
    if 'int8' in precisions:
        job.crops, job.calibration = _calibration(job, calibration_images, calibration_method, record)
    job.views = ParityViews.of(loaded, parity_images)
    job.output_dir = ensure_writable_dir(output_dir)
    job.failed_dir = ensure_writable_dir(failed_dir) if failed_dir is not None else None
    job.result.parity_images = job.views.description

    fp32_seconds = _export_fp32(job, opset, softmax)
    settings = _settings(loaded, opset, softmax, calibration_method, int8_fallback)
    try:
        with tempfile.TemporaryDirectory(prefix='alexnet-zoo-export-') as workdir:
            for precision in precisions:
                t0 = time.perf_counter() - (fp32_seconds if precision == 'fp32' else 0)
                row = _export_precision(job, precision, Path(workdir), softmax)
                row.update(opset=opset, seconds=time.perf_counter() - t0)
                _keep(job, row, precision)
    except BaseException:  # export.json lists what was written even when a later precision raised; that error wins
        with contextlib.suppress(Exception):
            record_export(job.output_dir, job.result, job.meta['weights_sha256'], settings)
        raise
    record_export(job.output_dir, job.result, job.meta['weights_sha256'], settings)
    job.result.seconds = time.perf_counter() - start
    failed = [f'{r["precision"]}: {gate_failure(r["precision"], r)}' for r in job.result.rows if r['passed'] is False]
    if failed:
        raise ParityGateError(f'parity gate failed, not written: {"; ".join(failed)}', job.result)
    return job.result


def _export_fp32(job: '_Job', opset: int, softmax: bool) -> float:
    """The fp32 graph every precision is made from, and its metadata; the seconds it took."""
    job.say(f'exporting {job.loaded.name} to ONNX (opset {opset})')
    t0 = time.perf_counter()
    job.export = lambda module: torch_to_onnx(module, data_config(module)['input_size'], opset, softmax)  # noqa: E731
    job.fp32 = job.export(job.model)
    job.meta = base_metadata(job.loaded, job.model, opset, softmax)
    return time.perf_counter() - t0


def _settings(loaded: LoadedModel, opset: int, softmax: bool, method: str, int8_fallback) -> dict:
    """The settings export.json records with every file of this export."""
    return {'opset': opset, 'softmax': softmax, 'calibration_method': method,
            'int8_fallback': int8_fallback if isinstance(int8_fallback, str) else list(int8_fallback),
            'checkpoint': {'name': Path(loaded.source).name, 'sha256': checkpoint_sha256(loaded.source)}}


@dataclass
class _Job:
    """What every precision of one export reads: the model, the views, the fp32 graph, the int8 settings."""
    loaded: LoadedModel
    model: object
    say: Callable[[str], None]
    result: ExportResult
    fallback: Union[str, List[str]]
    explain: bool
    cache: Optional[Path]
    crops: object = None
    crop_source: str = ''  # where the calibration crops came from, in words
    calibration: dict = field(default_factory=dict)
    views: Optional[ParityViews] = None
    output_dir: Optional[Path] = None
    failed_dir: Optional[Path] = None
    export: Optional[Callable] = None
    fp32: Optional[onnx.ModelProto] = None
    meta: dict = field(default_factory=dict)


def _check_arguments(opset: int, method: str, int8_fallback, calibration_cache, output_dir):
    """The cheap checks, before the views and crops that take a while; the parsed ``int8_fallback``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f'opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}')
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'unknown calibration method {method!r} (choose from {", ".join(CALIBRATION_METHODS)})')
    fallback = parse_fallback(int8_fallback)
    if calibration_cache is not None and not Path(calibration_cache).is_file():
        raise FileNotFoundError(f'calibration cache not found: {calibration_cache}')
    check_writable_dir(output_dir)
    return fallback


def _calibration(job: _Job, images: Optional[PathLike], method: str, record: Optional[dict]):
    """The calibration crops and what the graph records of them (from the cache's ``record`` when one is given)."""
    crops, job.crop_source = calibration_crops(job.model, images)
    calibration = _described(job.crop_source, method, len(crops))
    job.result.calibration = calibration['source']
    if record is not None:  # the graph records how its ranges were computed, not where they were read
        calibration = {key: record[key] for key in ('method', 'crops', 'source')}
        job.result.calibration = f'{calibration["source"]} (ranges read from {job.cache.name})'
    return crops, calibration


def _export_precision(job: _Job, precision: str, workdir: Path, softmax: bool) -> dict:
    """One precision's graph, made, checked, judged and written (or not, if it fails its gate): its row."""
    extra, int8 = {}, None
    if precision == 'fp32':
        graph = onnx.ModelProto()
        graph.CopyFrom(job.fp32)  # the metadata goes on the copy: int8 is quantized from the same bytes always
    elif precision == 'fp16':
        job.say('converting to fp16')
        graph = to_fp16(job.fp32)
    else:
        int8 = _make_int8(job, workdir)
        graph = int8.graph
        extra = {'calibration': job.calibration, 'float_layers': int8.float_layers, 'equalized': int8.equalized}
    set_metadata(graph, {**job.meta, 'precision': precision, **extra})
    check_graph(graph, softmax)
    job.say(f'checking {FILENAMES[precision]} with ONNX Runtime')
    row = write_checked(graph, job.output_dir / FILENAMES[precision], precision, job.views, job.loaded.trained,
                        job.failed_dir)
    if int8 is not None:
        _int8_row(job, int8, row)
    return row


def _make_int8(job: _Job, workdir: Path) -> Int8Result:
    """The int8 graph (``export.int8.remedy``), its calibration record following the ranges the remedy settled on."""
    job.say(f'quantizing to int8 ({job.result.calibration})')
    int8 = make_int8(job.model, job.fp32, job.export, job.crops, job.views.judge_graph('int8', job.loaded.trained),
                     job.views.x, workdir, job.calibration['method'], job.fallback, job.explain, job.cache, job.say)
    bad = zero_point_problems(int8.graph)
    if bad:
        raise RuntimeError(f'int8 graph breaks TensorRT\'s Q/DQ rule: {bad[0]}')
    if int8.quantizer.method != job.calibration['method']:  # the remedy's other ranges (never with a cache)
        job.calibration = _described(job.crop_source, int8.quantizer.method, len(job.crops))
        job.result.calibration = job.calibration['source']
    return int8


def _described(source: str, method: str, crops: int) -> dict:
    """What the int8 graph records of its calibration: the method, the crops, and both in words."""
    return {'method': method, 'crops': crops, 'source': f'{source}, {method} calibration'}


def _int8_row(job: _Job, int8: Int8Result, row: dict) -> None:
    """The int8 row's settings, remedy and attempts, NNCF's comparison (``--explain``) and the extra files."""
    row.update(float_layers=int8.float_layers, equalized=int8.equalized, attempts=int8.attempts,
               int8_settings=int8_settings(int8, job.calibration['crops']))
    if job.explain:  # seconds more: NNCF's int8 of the same graph, judged beside ours
        job.say('quantizing with NNCF too, for comparison (--explain)')
        as_written = job.views.judge_graph('int8', job.loaded.trained, as_cpu_runs=False)  # NNCF's own form
        row['compared'] = compare_with_nncf(job.fp32, job.crops, int8, as_written, job.views.x, row['int8_settings'],
                                            row['ms_b1'])
    write_int8_extras(int8, job.output_dir, row, job.views, job.result, job.calibration)


def _keep(job: _Job, row: dict, precision: str) -> None:
    """The row into the result, and where its graph went (its folder, or the failed graphs' folder)."""
    job.result.rows.append(row)
    if row['passed'] is not False:
        job.result.paths[precision] = job.output_dir / FILENAMES[precision]
    elif job.failed_dir is not None:
        job.result.failed_paths[precision] = job.failed_dir / FILENAMES[precision]


def parse_precisions(precisions: Union[str, Iterable[str]]) -> List[str]:
    """'fp32,int8' or ['int8', 'fp32'] -> ['fp32', 'int8'] (canonical order, no repeats); unknown ones raise."""
    items = precisions.split(',') if isinstance(precisions, str) else list(precisions)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in GRAPH_PRECISIONS]
    if unknown or not items:
        raise UsageError(f'unknown precision {", ".join(map(repr, unknown)) or "(none given)"} '
                         f'(choose from {", ".join(GRAPH_PRECISIONS)})')
    return [p for p in GRAPH_PRECISIONS if p in items]
