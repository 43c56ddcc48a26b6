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
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.cli import UsageError, first_line
from alexnet_zoo.data import eval_transform, sample_batch
from alexnet_zoo.files import PathLike, ensure_writable_dir
from alexnet_zoo.samples import Photo
from export import parity
from export.contract import GRAPH_PRECISIONS
from export.runner import BackendUnavailable, Runner

from .artifacts import artifact_for, export_graphs, graphs_in
from .environment import cpu_threads, environment
from .latency import DEFAULT_TIMING, QUICK_TIMING, TimingConfig, summarize, time_runner, timing_dict
from .registry import BACKENDS, PRECISIONS, Spec, parse_batch_sizes, parse_list, plan
from .report import SCHEMA_VERSION, compare_reports, read_report, write_report
from .summary import add_speedups

DEFAULT_PRECISIONS = ('fp32', 'bf16', 'int8')
DEFAULT_BATCH_SIZES = (1, 32)
# --quick: no torch.compile (its compilation alone takes longer than the whole quick run), batch 1, short timing.
QUICK_BACKENDS = ('torch', 'onnxruntime', 'openvino', 'tensorrt')
QUICK_PRECISIONS = ('fp32', 'int8')
QUICK_BATCH_SIZES = (1,)


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
        raise ValueError(f'--data {folder}: {first_line(e)}') from None
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
    return {'top1': parity.top_k_rate(logits, labels, 1), 'top5': parity.top_k_rate(logits, labels, 5)}


def parity_figures(reference: np.ndarray, logits: np.ndarray, name: str, precision: str, trained: bool) -> dict:
    figures = parity.compare(reference, logits)
    return {'reference': name, **figures, **parity.judge(precision, figures, trained)}


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
    reasons = {spec: spec.unavailable() for spec in specs}
    graphs_needed = sorted({s.graph for s in specs if not reasons[s] and s.graph}, key=GRAPH_PRECISIONS.index)
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
        reused = sorted(graphs, key=GRAPH_PRECISIONS.index)
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
            failure = export_failures.get(spec.graph) if not reasons[spec] else None
            try:
                if reasons[spec]:
                    raise BackendUnavailable(reasons[spec])
                if failure:
                    skipped.append({**entry, 'reason': f'the {spec.graph} graph failed its parity gate '
                                                       f'at export ({failure}); not written', 'failed': True})
                    bar.update(1 + len(batch_sizes))
                    continue
                artifact = artifact_for(spec, model, graphs, workdir, batch_sizes)
                runner = spec.runner(artifact, spec.precision, spec.device, threads)
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


