"""``run_benchmark``: the same preprocessed photographs through every backend, parity against PyTorch fp32 and an
fp64 reference, latency per batch size, one report.

Order of work: check every input (so a mistake costs seconds, not minutes), compute the references, export only
the ONNX graphs that an available row needs (``export.onnx``), then one runner at a time: parity logits, then
latency at each batch size, then close it (one backend's threads and memory never overlap another's timing).
Report files are written only at the end, each one atomically.
"""
import copy
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.fileio import UsageError, ensure_writable_dir
from alexnet_zoo.samples import Photo, eval_transform, sample_batch

from . import parity
from .environment import environment
from .latency import DEFAULT_TIMING, QUICK_TIMING, TimingConfig, summarize, time_runner, timing_dict
from .report import SCHEMA_VERSION, compare_reports, read_report, write_report
from .runner import BackendUnavailable, Runner
from .runners import (OnnxRuntimeRunner, OpenVINORunner, TorchRunner, cpu_threads, onnxruntime_reason,
                      openvino_reason, torch_dtype)

PathLike = Union[str, Path]

BACKENDS = ('torch', 'torch-compile', 'onnxruntime', 'openvino', 'tensorrt')
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')
DEFAULT_PRECISIONS = ('fp32', 'bf16', 'int8')
DEFAULT_BATCH_SIZES = (1, 32)
# --quick: no torch.compile (its compilation alone takes longer than the whole quick run), batch 1, short timing.
QUICK_BACKENDS = ('torch', 'onnxruntime', 'openvino', 'tensorrt')
QUICK_PRECISIONS = ('fp32', 'int8')
QUICK_BATCH_SIZES = (1,)

BASELINE = ('torch', 'fp32', 'cpu')  # speed-ups are against PyTorch eager fp32 on the CPU, same batch size
ONNX_BACKENDS = ('onnxruntime', 'openvino', 'tensorrt')
# The exported graph an ONNX backend runs for a precision: OpenVINO's bf16 is the fp32 graph under a bf16 hint.
GRAPH_FOR = {'fp32': 'fp32', 'fp16': 'fp16', 'int8': 'int8'}
OPENVINO_GRAPH_FOR = {**GRAPH_FOR, 'bf16': 'fp32'}
NO_BF16_GRAPH = 'not supported: export.onnx writes no bf16 graph (bf16 is an execution precision: PyTorch, OpenVINO)'

Spec = Tuple[str, str, str]  # backend, precision, device


def parse_list(text: Union[str, Sequence[str]], known: Sequence[str], what: str) -> Tuple[str, ...]:
    """``'a,b'`` -> ('a', 'b'), each checked against ``known``; a usage error otherwise."""
    items = [s.strip() for s in (text.split(',') if isinstance(text, str) else text) if str(s).strip()]
    if not items:
        raise UsageError(f'no {what} given')
    unknown = [s for s in items if s not in known]
    if unknown:
        raise UsageError(f'unknown {what}: {", ".join(unknown)} (choose from {", ".join(known)})')
    return tuple(dict.fromkeys(items))


def parse_batch_sizes(text: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    items = [s.strip() for s in text.split(',')] if isinstance(text, str) else list(text)
    sizes = []
    for s in items:
        try:
            size = int(s)
        except (TypeError, ValueError):
            raise UsageError(f'batch size must be a whole number, got {s!r}') from None
        if size < 1:
            raise UsageError(f'batch size must be at least 1, got {size}')
        sizes.append(size)
    if not sizes:
        raise UsageError('no batch sizes given')
    return tuple(sorted(set(sizes)))


def plan(backends: Sequence[str], precisions: Sequence[str], gpu: bool) -> List[Spec]:
    """Every (backend, precision, device) the run covers, each to become a result row or a skipped entry."""
    specs = []
    for backend in backends:
        for precision in precisions:
            if backend in ('torch', 'torch-compile'):
                specs.append((backend, precision, 'cuda' if precision == 'fp16' else 'cpu'))
            elif backend == 'onnxruntime':
                specs.append((backend, precision, 'cpu'))
                if gpu:
                    specs.append((backend, precision, 'cuda'))
            elif backend == 'openvino':
                specs.append((backend, precision, 'cpu'))
            else:
                specs.append((backend, precision, 'cuda'))
    return specs


def unavailable(spec: Spec) -> Optional[str]:
    """Why this combination cannot run here (cheap checks, before exporting anything), or None."""
    backend, precision, device = spec
    try:
        if backend in ('torch', 'torch-compile'):
            torch_dtype(precision, device)
            if device == 'cuda' and not torch.cuda.is_available():
                return 'no CUDA GPU (or no CUDA-enabled PyTorch) here'
        elif backend == 'onnxruntime':
            return NO_BF16_GRAPH if precision not in GRAPH_FOR else onnxruntime_reason(device)
        elif backend == 'openvino':
            return openvino_reason(precision)
        elif backend == 'tensorrt':
            if precision not in GRAPH_FOR:
                return NO_BF16_GRAPH
            from export.trt import import_tensorrt, require_gpu
            require_gpu()
            import_tensorrt()
    except BackendUnavailable as e:
        return str(e)
    except ImportError as e:
        return f'cannot import {e.name or e}'
    return None


def graph_precision(spec: Spec) -> Optional[str]:
    backend, precision, _ = spec
    if backend not in ONNX_BACKENDS:
        return None
    return (OPENVINO_GRAPH_FOR if backend == 'openvino' else GRAPH_FOR).get(precision)


def make_runner(spec: Spec, model: torch.nn.Module, graphs: Dict[str, Path], workdir: Path,
                batch_sizes: Sequence[int], threads: int) -> Runner:
    backend, precision, device = spec
    if backend in ('torch', 'torch-compile'):
        return TorchRunner(model, precision, device, compile=backend == 'torch-compile')
    graph = graphs[graph_precision(spec)]
    if backend == 'onnxruntime':
        return OnnxRuntimeRunner(graph, precision, device, threads)
    if backend == 'openvino':
        return OpenVINORunner(graph, precision, device, threads)
    from export.trt import BatchProfile, build_engine
    from .tensorrt_runner import TensorRTRunner
    largest = max(batch_sizes)
    built = build_engine(graph, workdir / f'model.{graph_precision(spec)}.plan', BatchProfile(1, largest, largest))
    return TensorRTRunner(built.plan, device)


def infer_in_batches(runner: Runner, x: np.ndarray, batch_sizes: Sequence[int]) -> np.ndarray:
    """Logits for every image, run only at the benchmarked batch sizes (no backend compiles an extra shape).

    Chunks of the largest size; the remainder is padded up to the smallest size that holds it (by repeating its
    last image) and the padding's logits are dropped: images in a batch do not affect one another.
    """
    largest, out = max(batch_sizes), []
    for start in range(0, len(x), largest):
        chunk = x[start:start + largest]
        size = min(s for s in batch_sizes if s >= len(chunk))
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)]) if size > len(chunk) else chunk
        out.append(runner.infer(padded)[:len(chunk)])
    return np.concatenate(out)


def tile(x: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of ``batch_size`` real images (the photographs repeated as needed)."""
    return np.ascontiguousarray(x[np.arange(batch_size) % len(x)])


def reference_logits(model: torch.nn.Module, x: np.ndarray, dtype: torch.dtype, chunk: int = 32) -> np.ndarray:
    """PyTorch eager logits in ``dtype`` (fp32, or fp64 on a float64 copy of the model), in chunks."""
    model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        out = [model(torch.from_numpy(x[i:i + chunk]).to(dtype)).double().numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(out)


def labelled_images(folder: PathLike, model: torch.nn.Module, label_names: Optional[Sequence[str]],
                    num_classes: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """An ImageFolder (``class/image.jpg``) preprocessed for ``model``: images, label indices, class names.

    Label order: the checkpoint's ``label_names`` when it has them (every folder must be one), else the
    sorted folder names.
    """
    from torchvision.datasets import ImageFolder
    try:
        dataset = ImageFolder(str(folder), transform=eval_transform(model))
        images = [dataset[i] for i in range(len(dataset))]
    except (OSError, ValueError) as e:
        raise ValueError(f'--data {folder}: {str(e).strip().splitlines()[0]}') from None
    classes = list(dataset.classes)
    if label_names:
        index = {name: i for i, name in enumerate(label_names)}
        foreign = [c for c in classes if c not in index]
        if foreign:
            raise ValueError(f'--data {folder}: folder(s) {", ".join(foreign[:3])} are not among the model\'s '
                             f'{len(label_names)} label names (e.g. {", ".join(list(label_names)[:3])})')
        mapping = [index[c] for c in classes]
    else:
        if len(classes) > num_classes:
            raise ValueError(f'--data {folder}: {len(classes)} class folders, the model has {num_classes} classes')
        mapping = list(range(len(classes)))
    x = torch.stack([im for im, _ in images]).numpy()
    labels = np.array([mapping[target] for _, target in images])
    return x, labels, classes


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    top5 = np.argsort(-logits, axis=1)[:, :min(5, logits.shape[1])]
    return {'top1': float(np.mean(logits.argmax(axis=1) == labels)),
            'top5': float(np.mean([label in row for label, row in zip(labels, top5)]))}


def parity_figures(reference: np.ndarray, logits: np.ndarray, name: str, precision: str, trained: bool) -> dict:
    figures = parity.compare(reference, logits)
    return {'reference': name, **figures, **parity.judge(precision, figures, trained)}


def export_graphs(loaded: LoadedModel, workdir: Path, precisions: Sequence[str],
                  calibration_images: Optional[PathLike] = None,
                  progress: Optional[Callable[[str], None]] = None) -> Tuple[Dict[str, Path], Dict[str, str]]:
    """The ONNX graphs for ``precisions``, written by export.onnx (the project's one exporter), and for each
    graph that failed its parity gate at export (so was not written) what failed."""
    from export.onnx import ParityGateError, export_onnx
    try:
        result = export_onnx(loaded, workdir, precisions=tuple(precisions), calibration_images=calibration_images,
                             progress=progress)
    except ParityGateError as e:
        result = e.result
    failed = {r['precision']: f'SQNR {r["sqnr_db"]:.1f} dB, top-1 agreement {r["top1_agreement"]:.0%}, '
                              f'max rel err {r["max_rel_err"]:.1e}'
              for r in result.rows if r.get('passed') is False}
    return {p: Path(path) for p, path in result.paths.items()}, failed


def graphs_in(onnx_dir: PathLike, loaded: LoadedModel, precisions: Sequence[str]) -> Dict[str, Path]:
    """Graphs that export.onnx already wrote in ``onnx_dir``, checked (from their metadata) to come from the same
    model and classes; a precision whose file is absent is left out (to be exported there)."""
    from export.onnx import FILENAMES, read_metadata
    onnx_dir = Path(onnx_dir)
    if onnx_dir.exists() and not onnx_dir.is_dir():
        raise NotADirectoryError(f'--onnx-dir is not a folder: {onnx_dir}')
    graphs = {p: onnx_dir / FILENAMES[p] for p in precisions if (onnx_dir / FILENAMES[p]).is_file()}
    for path in graphs.values():
        meta = read_metadata(path)
        found = (meta.get('model_name'), meta.get('num_classes'))
        if found != (loaded.name, loaded.num_classes):
            raise ValueError(f'{path} was exported from {found[0]} with {found[1]} classes, not {loaded.name} with '
                             f'{loaded.num_classes}')
    return graphs


def run_benchmark(
        loaded: LoadedModel,
        output_dir: PathLike,
        backends: Union[str, Sequence[str], None] = None,
        precisions: Union[str, Sequence[str], None] = None,
        batch_sizes: Union[str, Sequence[int], None] = None,
        images: Optional[List[Photo]] = None,
        images_source: str = 'sample photographs (scikit-image)',
        calibration_images: Optional[PathLike] = None,
        data: Optional[PathLike] = None,
        onnx_dir: Optional[PathLike] = None,
        threads: Optional[int] = None,
        quick: bool = False,
        compare: Optional[PathLike] = None,
        timing: Optional[TimingConfig] = None,
        progress: bool = True,
        command: Optional[str] = None,
) -> dict:
    """Benchmark ``loaded`` on every requested backend and precision; write the report files into
    ``output_dir``; return the report. ``--quick`` changes the defaults of the lists it is not given.

    ``images`` (default: the sample photographs) are the parity images and, repeated, the timed batches;
    ``calibration_images`` a folder for int8 calibration (default: export.onnx's, the sample photographs);
    ``data`` an ImageFolder for accuracy; ``onnx_dir`` where the graphs are kept: those export.onnx already
    wrote there for this model are reused, missing ones are exported there (default: a temporary folder, so
    every run exports afresh); ``threads`` compute threads for every backend
    (default: the usable cores). A graph that fails its parity gate at export is not written: its rows
    go to ``skipped`` with ``failed: true`` and count as failed gates.
    """
    started = time.perf_counter()
    backends = parse_list(backends or (QUICK_BACKENDS if quick else BACKENDS), BACKENDS, 'backend')
    precisions = parse_list(precisions or (QUICK_PRECISIONS if quick else DEFAULT_PRECISIONS), PRECISIONS,
                            'precision')
    batch_sizes = parse_batch_sizes(batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES))
    timing = timing or (QUICK_TIMING if quick else DEFAULT_TIMING)
    if threads is not None and threads < 1:
        raise UsageError(f'threads must be at least 1, got {threads}')
    old_report = read_report(compare) if compare else None
    output_dir = ensure_writable_dir(output_dir)
    model = loaded.model.eval()
    names, x = sample_batch(model, images)
    x = x.numpy()
    labelled = labelled_images(data, model, loaded.label_names, loaded.num_classes) if data else None

    threads = threads or cpu_threads()
    specs = plan(backends, precisions, torch.cuda.is_available())
    reasons = {spec: unavailable(spec) for spec in specs}
    graphs_needed = sorted({graph_precision(s) for s in specs if not reasons[s] and graph_precision(s)},
                           key=PRECISIONS.index)
    graphs = graphs_in(onnx_dir, loaded, graphs_needed) if onnx_dir else {}
    if onnx_dir:
        ensure_writable_dir(onnx_dir)
    torch.set_num_threads(threads)
    steps = 1 + bool(graphs_needed) + sum(1 + len(batch_sizes) for _ in specs)
    bar = tqdm(total=steps, desc='references', unit='step', file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    ref32 = reference_logits(model, x, torch.float32)
    ref64 = reference_logits(model, x, torch.float64)
    bar.update()
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-bench-') as workdir:
        workdir = Path(workdir)
        missing = [p for p in graphs_needed if p not in graphs]
        reused = sorted(graphs, key=PRECISIONS.index)
        export_failures = {}
        if missing:
            bar.set_description(f'export {",".join(missing)}')
            exported, export_failures = export_graphs(
                loaded, Path(onnx_dir) if onnx_dir else workdir, missing, calibration_images,
                lambda message: bar.set_description(message.split(' (')[0]))
            graphs.update(exported)
        bar.update(bool(graphs_needed))
        for spec in specs:
            backend, precision, device = spec
            bar.set_description(f'{backend} {precision}')
            entry = {'backend': backend, 'precision': precision, 'device': device}
            failure = export_failures.get(graph_precision(spec)) if not reasons[spec] else None
            try:
                if reasons[spec]:
                    raise BackendUnavailable(reasons[spec])
                if failure:
                    skipped.append({**entry, 'reason': f'the {graph_precision(spec)} graph failed its parity gate '
                                                       f'at export ({failure}); not written', 'failed': True})
                    bar.update(1 + len(batch_sizes))
                    continue
                runner = make_runner(spec, model, graphs, workdir, batch_sizes, threads)
            except BackendUnavailable as e:
                skipped.append({**entry, 'reason': str(e)})
                bar.update(1 + len(batch_sizes))
                continue
            with runner:
                results.extend(_measure(runner, spec, x, ref32, ref64, labelled, batch_sizes, timing,
                                        loaded.trained, bar))
    bar.close()

    report = {
        'schema_version': SCHEMA_VERSION,
        'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'command': command,
        'environment': environment(threads),
        'model': {'name': loaded.name, 'num_classes': loaded.num_classes, 'source': loaded.source,
                  'trained': loaded.trained, 'gates_judged': loaded.trained,
                  'margin_std': parity.margin_std(ref32)},
        'images': {'source': images_source, 'count': len(names), 'names': names},
        'graphs': {'folder': str(onnx_dir) if onnx_dir else None, 'reused': reused, 'exported': missing,
                   'calibration_images': str(calibration_images) if calibration_images else None},
        'data': None if labelled is None else {'path': str(data), 'count': int(len(labelled[1])),
                                                'classes': labelled[2]},
        'settings': {'backends': list(backends), 'precisions': list(precisions), 'batch_sizes': list(batch_sizes),
                     'quick': quick, 'timing': timing_dict(timing), 'gates': parity.GATES},
        'results': results,
        'skipped': skipped,
    }
    add_speedups(report)
    if old_report is not None:
        report['comparison'] = compare_reports(old_report, report, str(compare))
    report['duration_s'] = round(time.perf_counter() - started, 1)
    write_report(report, output_dir)
    return report


def _measure(runner: Runner, spec: Spec, x: np.ndarray, ref32: np.ndarray, ref64: np.ndarray,
             labelled, batch_sizes: Sequence[int], timing: TimingConfig, trained: bool, bar) -> List[dict]:
    """Parity (and accuracy) once for this runner, then one result row per batch size."""
    backend, precision, device = spec
    logits = infer_in_batches(runner, x, batch_sizes)
    common = {
        'parity': parity_figures(ref32, logits, 'torch fp32', precision, trained),
        'parity_fp64': parity_figures(ref64, logits, 'torch fp64', precision, trained),
    }
    if labelled is not None:
        common['accuracy'] = accuracy(infer_in_batches(runner, labelled[0], batch_sizes), labelled[1])
    bar.update()
    rows = []
    for batch_size in batch_sizes:
        bar.set_description(f'{backend} {precision} b{batch_size}')
        prepared = runner.prepare(tile(x, batch_size))
        times = time_runner(runner, prepared, timing)
        del prepared
        rows.append({'backend': backend, 'precision': precision, 'device': device, 'batch_size': batch_size,
                     **summarize(times, batch_size), **common})
        bar.update()
    return rows


def add_speedups(report: dict) -> None:
    """Each row's speed-up over PyTorch eager fp32 (CPU) at the same batch size, and per batch size the fastest
    row that passes its gates (every row when the gates are not judged)."""
    rows = report['results']
    base = {r['batch_size']: r['latency_ms']['p50'] for r in rows
            if (r['backend'], r['precision'], r['device']) == BASELINE}
    for r in rows:
        b = base.get(r['batch_size'])
        r['speedup_vs_torch_fp32'] = b / r['latency_ms']['p50'] if b else None
    fastest = []
    for batch_size in sorted({r['batch_size'] for r in rows}):
        candidates = [r for r in rows if r['batch_size'] == batch_size and row_passed(r) is not False]
        if candidates:
            best = min(candidates, key=lambda r: r['latency_ms']['p50'])
            fastest.append({'batch_size': batch_size, 'backend': best['backend'], 'precision': best['precision'],
                            'device': best['device'], 'p50_ms': best['latency_ms']['p50'],
                            'baseline_p50_ms': base.get(batch_size),
                            'speedup_vs_torch_fp32': best['speedup_vs_torch_fp32']})
    judged = [row_passed(r) for r in rows if row_passed(r) is not None]
    judged += [False for s in report['skipped'] if s.get('failed')]  # graphs that failed their gate at export
    report['summary'] = {
        'baseline': ' '.join(BASELINE),
        'fastest_passing': fastest,
        'gates_judged': bool(judged),
        'rows_failed': sum(1 for p in judged if p is False),
        'passed': all(judged) if judged else None,
    }


def row_passed(row: dict) -> Optional[bool]:
    """True/False when the gates were judged (both references), None when not (random weights)."""
    verdicts = [row['parity']['passed'], row['parity_fp64']['passed']]
    if any(v is None for v in verdicts):
        return None
    return all(verdicts)


def exit_code(report: dict) -> int:
    """0 when every judged gate passed (or none was judged), 1 when one failed."""
    return 1 if report['summary']['rows_failed'] else 0
