"""``run_benchmark``: the same preprocessed photographs through every backend, parity against PyTorch fp32 and an
fp64 reference, latency per batch size, one report.

Order of work: check every input (so a mistake costs seconds, not minutes), compute the references, export only
the ONNX graphs that an available row needs (``export.onnx``), then open every runner and take its parity logits
and prepare its inputs at each batch size; then time all rows together in interleaved rounds (``latency``), so
that a row and its baseline meet the same minute of a shared machine; then close the runners. Report files are
written only at the end, each one atomically.
"""
import dataclasses
import importlib.util
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.cli import UsageError, first_line
from alexnet_zoo.data import parity_views
from alexnet_zoo.files import PathLike, ensure_writable_dir
from alexnet_zoo.samples import PHOTOGRAPHS, Photo, open_rgb
from alexnet_zoo.stats import flops_per_image
from export import parity
from export.contract import GRAPH_PRECISIONS, read_metadata
from export.runner import BackendUnavailable, Runner
from export.views import reference_logits

from .artifacts import artifact_for, export_graphs, graphs_in
from .ceilings import bytes_moved
from .compare import compare_reports
from .environment import cpu_features, cpu_threads, environment
from .probes import measure_ceilings
from .latency import DEFAULT_TIMING, QUICK_TIMING, TimingConfig, Window, round_figures, time_rounds, timing_dict
from .model_bytes import count_activations
from .registry import BACKENDS, BASELINE, PRECISIONS, Spec, parse_batch_sizes, parse_list, plan
from .report import read_report, write_report
from .results import SCHEMA_VERSION, read_back
from .stages import model_stages, stage_profile
from .summary import add_noise, add_roofline, add_speedups, passing_by_latency
from .uncertainty import median_ci_rank

MIN_ROUNDS = 6  # the fewest rounds whose [min, max] covers the median with at least 95 % (96.9 %)
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


def labelled_views(folder: PathLike, model: torch.nn.Module, label_names: Optional[Sequence[str]],
                   num_classes: int) -> Tuple[np.ndarray, np.ndarray, List[str], int]:
    """Views (centre crops, random crops and flips: at least 256) of an ImageFolder (``class/image.jpg``),
    preprocessed for ``model``: views, their label indices, the class names, the number of images.

    Label order: the checkpoint's ``label_names`` when it has them (every folder must be one), else the
    sorted folder names.
    """
    from torchvision.datasets import ImageFolder
    try:
        dataset = ImageFolder(str(folder), loader=open_rgb)
        images = [(dataset.samples[i][0], dataset[i][0]) for i in range(len(dataset))]
    except (OSError, ValueError, SyntaxError) as e:
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
    _, x, source = parity_views(model, images)
    labels = np.array([mapping[dataset.targets[i]] for i in source.tolist()])
    return x.numpy(), labels, classes, len(images)


def parity_figures(reference: np.ndarray, logits: np.ndarray, name: str, precision: str, trained: bool,
                   accuracies: Optional[Dict[str, float]] = None) -> dict:
    """compare() and the gate; ``accuracies`` (this row's and the reference's top-1) join the judgement."""
    figures = {**parity.compare(reference, logits), **(accuracies or {})}
    return {'reference': name, **figures, **parity.judge(precision, figures, trained)}


def timing_config(quick: bool = False, rounds: Optional[int] = None, seconds_per_row: Optional[float] = None,
                  seed: Optional[int] = None, run_to_run: Optional[float] = None) -> TimingConfig:
    """The default (or --quick) timing with a user's rounds, seconds per row, seed and run-to-run term; a usage
    error for values that cannot time anything."""
    if rounds is not None and rounds < MIN_ROUNDS:
        raise UsageError(f'--rounds must be at least {MIN_ROUNDS} (fewer rounds cannot give a 95 % interval of a '
                         f'median), got {rounds}')
    if seconds_per_row is not None and not 0 <= seconds_per_row <= 60:
        raise UsageError(f'--seconds-per-row must be between 0 and 60, got {seconds_per_row}')
    if run_to_run is not None and not 0 <= run_to_run < 1:
        raise UsageError(f'--run-to-run is a relative standard deviation from 0 to 1, got {run_to_run}')
    given = {k: v for k, v in (('rounds', rounds), ('seconds_per_row', seconds_per_row), ('seed', seed),
                               ('run_to_run', run_to_run)) if v is not None}
    return dataclasses.replace(QUICK_TIMING if quick else DEFAULT_TIMING, **given)


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
        devices: Optional[Sequence[str]] = None,
) -> dict:
    """Benchmark ``loaded`` on every requested backend and precision; write the report files into
    ``output_dir``; return the report. ``--quick`` changes the defaults of the lists it is not given.

    ``images`` (default: the sample photographs) are the parity images and, repeated, the timed batches;
    ``calibration_images`` a folder for int8 calibration (default: export.onnx's, the sample photographs);
    ``data`` an ImageFolder for accuracy; ``onnx_dir`` where the graphs are kept: those export.onnx already
    wrote there for this model are reused, missing ones are exported there (default: a temporary folder, so
    every run exports afresh); ``threads`` compute threads for every backend
    (default: the usable cores); ``devices`` keeps only the rows on these devices (and the baseline, which every
    speed-up needs). Parity is judged on at least 256 views of ``images`` (centre crops, random
    crops and flips). A graph that fails its parity gate at export is not written where graphs are kept, but
    its rows are measured from the failed file and fail, with ``export_failure`` saying why.
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
    names, x, _ = parity_views(model, images)
    x = x.numpy()
    labelled = labelled_views(data, model, loaded.label_names, loaded.num_classes) if data else None

    threads = threads or cpu_threads()
    specs = [s for s in plan(backends, precisions, torch.cuda.is_available())
             if devices is None or s.device in devices or tuple(s) == BASELINE]
    reasons = {spec: spec.unavailable() for spec in specs}
    graphs_needed = sorted({s.graph for s in specs if not reasons[s] and s.graph}, key=GRAPH_PRECISIONS.index)
    graphs = graphs_in(onnx_dir, loaded, graphs_needed) if onnx_dir else {}
    if onnx_dir:
        ensure_writable_dir(onnx_dir)
    torch.set_num_threads(threads)
    steps = 1 + bool(graphs_needed) + len(specs) + timing.rounds
    bar = tqdm(total=steps, desc='references', unit='step', file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    references = References(model, x, labelled)
    bar.update()
    results, skipped, windows = [], [], []
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-bench-') as workdir, ExitStack() as open_runners:
        workdir = Path(workdir)
        missing = [p for p in graphs_needed if p not in graphs]
        reused = sorted(graphs, key=GRAPH_PRECISIONS.index)
        export_failures = {}
        if missing:
            bar.set_description(f'export {",".join(missing)}')
            exported, export_failures = export_graphs(
                loaded, Path(onnx_dir) if onnx_dir else workdir, missing, calibration_images, workdir / 'failed',
                lambda message: bar.set_description(message.split(' (')[0]))
            graphs.update(exported)
        bar.update(bool(graphs_needed))
        activations = count_activations(graphs)  # the model's, on its first graph: the same at every precision
        stages = model_stages(model)
        for spec in specs:
            bar.set_description(f'{spec.backend} {spec.precision}')
            try:
                if reasons[spec]:
                    raise BackendUnavailable(reasons[spec])
                artifact = artifact_for(spec, model, graphs, workdir, batch_sizes, calibration_images)
                runner = open_runners.enter_context(spec.runner(artifact, spec.precision, spec.device, threads))
            except BackendUnavailable as e:
                skipped.append({'backend': spec.backend, 'precision': spec.precision, 'device': spec.device,
                                'reason': str(e)})
                bar.update()
                continue
            common = {**_parity(runner, spec, x, references, batch_sizes, loaded.trained),
                      **graph_notes(graphs.get(spec.graph), export_failures.get(spec.graph))}
            common['weight_bytes'] = runner.weight_bytes()  # reads the graph: once per runner
            for batch_size in batch_sizes:
                windows.append(Window(f'{spec.backend} {spec.precision} {spec.device} b{batch_size}', runner,
                                      runner.prepare(tile(x, batch_size))))
                results.append({'backend': spec.backend, 'precision': spec.precision, 'device': spec.device,
                                'batch_size': batch_size, **common})
            bar.update()
        bar.set_description('the machine\'s ceilings')
        try:  # the ceilings and per-layer times add to the report; a failure there must not cost the timed rows
            moved = [bytes_moved(r, activations['activation_bytes'] or 0) for r in results
                     if r['device'] == 'cpu' and r['weight_bytes']]
            ceilings = measure_ceilings(
                threads, cpu_features(), moved,
                gpu=any(r['device'] != 'cpu' for r in results), quick=quick,
                openvino=importlib.util.find_spec('openvino') is not None)
        except Exception as e:
            ceilings = {'error': first_line(e)}
        bar.set_description(f'timing {len(windows)} rows in {timing.rounds} rounds')
        rounds = time_rounds(windows, timing, lambda _: bar.update())
        for row, times in zip(results, rounds.times_ms):
            row.update(round_figures(times, row['batch_size'], timing.run_to_run))
        bar.set_description('per-layer times of the fastest rows')
        try:
            profiles = layer_profiles(results, windows, x, stages)
        except Exception as e:
            profiles = [{'error': first_line(e)}]
        windows.clear()  # the prepared inputs go before their runners close
    bar.close()

    report = {
        'schema_version': SCHEMA_VERSION,
        'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'command': command,
        'environment': environment(threads),
        'model': {'name': loaded.name, 'num_classes': loaded.num_classes, 'source': loaded.source,
                  'trained': loaded.trained, 'gates_judged': loaded.trained,
                  'margin_std': parity.margin_std(references.fp32), 'flops_per_image': flops_per_image(model),
                  'parameters': sum(p.numel() for p in model.parameters()),
                  **activations, 'stages': stages},
        'images': {'source': images_source, 'count': len(images) if images else len(PHOTOGRAPHS), 'views': len(x),
                   'names': names},
        'graphs': {'folder': str(onnx_dir) if onnx_dir else None, 'reused': reused, 'exported': missing,
                   'calibration_images': str(calibration_images) if calibration_images else None},
        'data': None if labelled is None else {'path': str(data), 'count': labelled[3], 'views': int(len(labelled[1])),
                                                'classes': labelled[2],
                                                'reference_accuracy': references.accuracy},
        'settings': {'backends': list(backends), 'precisions': list(precisions), 'batch_sizes': list(batch_sizes),
                     'quick': quick, 'timing': {**timing_dict(timing),
                                                'interval_coverage': round(median_ci_rank(timing.rounds)[1], 4)},
                     'gates': parity.GATES,
                     'accuracy_min_ratio': parity.ACCURACY_MIN_RATIO},
        'results': results,
        'skipped': skipped,
        'timing': {'rows': rounds.labels, 'order': rounds.order, 'steal_per_round': rounds.steal,
                   'steal': rounds.steal_total},
        'ceilings': ceilings,
        'layer_profiles': profiles,
    }
    add_speedups(report)
    add_noise(report)
    add_roofline(report)
    if old_report is not None:
        report['comparison'] = compare_reports(old_report, read_back(report), str(compare))
    report['duration_s'] = round(time.perf_counter() - started, 1)
    write_report(report, output_dir)
    return report


class References:
    """PyTorch eager's logits on the views in fp32 and fp64, and on the labelled views its accuracy."""

    def __init__(self, model: torch.nn.Module, x: np.ndarray, labelled=None):
        self.fp32 = reference_logits(model, x, torch.float32)
        self.fp64 = reference_logits(model, x, torch.float64)
        self.labelled, self.accuracy = labelled, None
        if labelled is not None:
            self.labelled_fp32 = reference_logits(model, labelled[0], torch.float32)
            self.accuracy = parity.accuracy(self.labelled_fp32, labelled[1])


def graph_notes(graph: Optional[Path], export_failure: Optional[str]) -> dict:
    """What a row's graph carries: the layers an int8 remedy kept in float or equalized, and whether it failed
    its gate at export (then it was measured from the failed file, and the row fails)."""
    if graph is None:
        return {}
    meta = read_metadata(graph)
    notes = {'float_layers': meta.get('float_layers') or [],
             'equalized': [e['layer'] for e in meta.get('equalized') or []]}
    if export_failure:
        notes['export_failure'] = export_failure
    return notes


def _parity(runner: Runner, spec: Spec, x: np.ndarray, references: References, batch_sizes: Sequence[int],
            trained: bool) -> dict:
    """Parity against both references (and accuracy on the labelled views) of one runner: the same at every
    batch size."""
    logits = infer_in_batches(runner, x, batch_sizes)
    common, accuracies = {}, None
    if references.labelled is not None:
        views, labels = references.labelled[:2]
        labelled_logits = infer_in_batches(runner, views, batch_sizes)
        common['accuracy'] = parity.accuracy(labelled_logits, labels)  # on every labelled view
        accuracies = parity.accuracy_figures(references.labelled_fp32, labelled_logits, labels)
    common['parity'] = parity_figures(references.fp32, logits, 'torch fp32', spec.precision, trained, accuracies)
    common['parity_fp64'] = parity_figures(references.fp64, logits, 'torch fp64', spec.precision, trained)
    return common


TOP_LAYERS = 8


def layer_profiles(rows: List[dict], windows: Sequence[Window], x: np.ndarray,
                   stages: Sequence[dict] = ()) -> List[dict]:
    """For the fastest row that passes its gates at each batch size, the time per layer from its runtime's own
    profiler (OpenVINO's performance counters, ONNX Runtime's profiling), top layers with their share, and every
    layer's time summed per stage of the model (``stages.stage_profile``)."""
    profiles = []
    for batch_size in sorted({r['batch_size'] for r in rows}):
        passing = passing_by_latency(rows, batch_size)
        if not passing:
            continue
        row = passing[0]
        runner = windows[next(i for i, r in enumerate(rows) if r is row)].runner
        layers = runner.layer_times(tile(x, batch_size))
        entry = {'batch_size': batch_size, 'backend': row['backend'], 'precision': row['precision'],
                 'device': row['device']}
        if not layers:
            profiles.append({**entry, 'layers': None, 'reason': f'{row["backend"]} has no per-layer profiler here'})
            continue
        total = sum(layer['ms'] for layer in layers)
        profiles.append({**entry, 'total_ms': total, 'layer_count': len(layers),
                         'layers': [{**layer, 'share': layer['ms'] / total if total else 0.0}
                                    for layer in layers[:TOP_LAYERS]],
                         **stage_profile(getattr(runner, 'graph', None), layers, stages)})
    return profiles
