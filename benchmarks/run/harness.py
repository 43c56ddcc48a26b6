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
from export import parity
from export.contract import GRAPH_PRECISIONS, read_metadata
from export.runner import BackendUnavailable, Runner
from export.views import reference_logits

from benchmarks.backends.artifacts import artifact_for, earlier_files, export_graphs, graphs_in
from benchmarks.roofline.ceilings import bytes_moved
from benchmarks.report.compare import compare_reports
from benchmarks.measure.environment import cpu_features, cpu_threads
from benchmarks.roofline.probes import measure_ceilings
from benchmarks.measure.latency import DEFAULT_TIMING, QUICK_TIMING, TimingConfig, Window, round_figures, time_rounds
from benchmarks.roofline.model_bytes import count_activations
from benchmarks.backends.registry import BACKENDS, BASELINE, PRECISIONS, Spec, parse_batch_sizes, parse_list, plan
from benchmarks.report.files import new_run_id, read_report, write_report
from benchmarks.report.schema import Report, Row, make_row, plain, updated
from benchmarks.run.inputs import RunInputs, make_report
from benchmarks.roofline.stages import model_stages, stage_profile
from benchmarks.report.summary import add_noise, add_roofline, add_speedups, passing_by_latency

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
) -> Report:
    """Benchmark ``loaded`` on every requested backend and precision; write the report files into
    ``output_dir``; return the report (a ``schema.Report``: what report.json holds). ``--quick`` changes the
    defaults of the lists it is not given.

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
    run, old_report, output_dir = _checked_inputs(
        loaded, output_dir, backends, precisions, batch_sizes, images, images_source, calibration_images, data,
        onnx_dir, threads, quick, compare, timing)
    specs, reasons, graphs_needed, graphs = _plan_rows(run, devices)
    torch.set_num_threads(run.threads)
    bar = tqdm(total=1 + bool(graphs_needed) + len(specs) + run.timing.rounds, desc='references', unit='step',
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    references = References(run.model, run.x, run.labelled)
    bar.update()
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-bench-') as workdir:
        workdir = Path(workdir)
        graphs_section, export_failures = _export_missing(run, graphs, graphs_needed, workdir, bar)
        activations = count_activations(graphs)  # the model's, on its first graph: the same at every precision
        stages = model_stages(run.model)
        measured = _measure(run, specs, reasons, graphs, export_failures, references, activations, stages, workdir,
                            bar)
    bar.close()
    report = make_report(run, command, references, activations, stages, graphs_section, measured)
    report = add_roofline(add_noise(add_speedups(report)))
    if old_report is not None:
        report = updated(report, comparison=compare_reports(old_report, report, str(compare)))
    report = updated(report, duration_s=round(time.perf_counter() - started, 1), run_id=new_run_id())
    write_report(report, output_dir)
    return report


def _checked_inputs(loaded, output_dir, backends, precisions, batch_sizes, images, images_source, calibration_images,
                    data, onnx_dir, threads, quick, compare, timing) -> Tuple[RunInputs, Optional[Report], Path]:
    """Every input checked, and the views made, before any export or timing: a mistake costs seconds, not
    minutes. --quick only changes the defaults of the lists it is not given."""
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
    run = RunInputs(loaded, model, names, x, labelled, backends, precisions, batch_sizes, timing,
                    threads or cpu_threads(), quick, images_source, len(images) if images else len(PHOTOGRAPHS), data,
                    onnx_dir, calibration_images)
    return run, old_report, output_dir


def _plan_rows(run: RunInputs, devices: Optional[Sequence[str]]) -> Tuple[List[Spec], dict, List[str], dict]:
    """The rows to run, why any cannot run here, the graphs that the available ones need and those ``onnx_dir``
    already holds: the baseline stays whatever ``devices`` says, since every speed-up needs it."""
    specs = [s for s in plan(run.backends, run.precisions, torch.cuda.is_available())
             if devices is None or s.device in devices or tuple(s) == BASELINE]
    reasons = {spec: spec.unavailable() for spec in specs}
    graphs_needed = sorted({s.graph for s in specs if not reasons[s] and s.graph}, key=GRAPH_PRECISIONS.index)
    graphs = graphs_in(run.onnx_dir, run.loaded, graphs_needed) if run.onnx_dir else {}
    if run.onnx_dir:
        ensure_writable_dir(run.onnx_dir)
    return specs, reasons, graphs_needed, graphs


def _export_missing(run: RunInputs, graphs: dict, graphs_needed: List[str], workdir: Path,
                    bar: tqdm) -> Tuple[dict, dict]:
    """Only the needed graphs that ``onnx_dir`` lacks are exported (into it, else into ``workdir``), so a kept
    folder spares the next run its exports; returns the report's ``graphs`` section and the exports that failed
    their gate (their rows are measured from the failed file, and fail)."""
    missing = [p for p in graphs_needed if p not in graphs]
    reused = sorted(graphs, key=GRAPH_PRECISIONS.index)
    export_failures = {}
    kept = earlier_files(run.onnx_dir, missing) if run.onnx_dir else []
    target = Path(run.onnx_dir) if run.onnx_dir and not kept else workdir
    if missing:
        bar.set_description(f'export {",".join(missing)}')
        exported, export_failures = export_graphs(
            run.loaded, target, missing, run.calibration_images,
            workdir / 'failed', lambda message: bar.set_description(message.split(' (')[0]))
        graphs.update(exported)
    bar.update(bool(graphs_needed))
    section = {'folder': str(run.onnx_dir) if run.onnx_dir else None, 'reused': reused, 'exported': missing,
               'calibration_images': str(run.calibration_images) if run.calibration_images else None}
    if missing and kept:  # an earlier export's ranges or diagnosis are the user's: exported beside, not over them
        section['exported_apart'] = kept
    return section, export_failures


def _measure(run: RunInputs, specs: List[Spec], reasons: dict, graphs: dict, export_failures: dict,
             references: 'References', activations: dict, stages: List[dict], workdir: Path, bar: tqdm) -> dict:
    """The report's measured sections. Every row is opened before any is timed, then all are timed together in
    interleaved rounds, so that a row and its baseline meet the same minute of a shared machine; the runners close
    before the temporary graphs go."""
    with ExitStack() as open_runners:
        results, skipped, windows = _open_rows(run, specs, reasons, graphs, export_failures, references, workdir,
                                               open_runners, bar)
        bar.set_description('the machine\'s ceilings')
        ceilings = _ceilings(run, results, activations)
        bar.set_description(f'timing {len(windows)} rows in {run.timing.rounds} rounds')
        rounds = time_rounds(windows, run.timing, lambda _: bar.update())
        results = [updated(row, **round_figures(times, row.batch_size, run.timing.run_to_run))
                   for row, times in zip(results, rounds.times_ms)]
        bar.set_description('per-layer times of the fastest rows')
        try:
            profiles = layer_profiles(results, windows, run.x, stages)
        except Exception as e:
            profiles = [{'error': first_line(e)}]
        windows.clear()  # the prepared inputs go before their runners close
    return {'results': results, 'skipped': skipped,
            'timing': {'rows': rounds.labels, 'order': rounds.order, 'steal_per_round': rounds.steal,
                       'steal': rounds.steal_total},
            'ceilings': ceilings, 'layer_profiles': profiles}


def _open_rows(run: RunInputs, specs: List[Spec], reasons: dict, graphs: dict, export_failures: dict,
               references: 'References', workdir: Path, open_runners: ExitStack,
               bar: tqdm) -> Tuple[List[Row], List[dict], List[Window]]:
    """Each runner opened, its parity taken once (the same at every batch size) and its inputs prepared at each
    batch size, so that nothing but inference is left for the timed rounds; a backend that cannot run here is
    skipped, saying why."""
    results, skipped, windows = [], [], []
    for spec in specs:
        bar.set_description(f'{spec.backend} {spec.precision}')
        try:
            if reasons[spec]:
                raise BackendUnavailable(reasons[spec])
            artifact = artifact_for(spec, run.model, graphs, workdir, run.batch_sizes, run.calibration_images)
            runner = open_runners.enter_context(spec.runner(artifact, spec.precision, spec.device, run.threads))
        except BackendUnavailable as e:
            skipped.append({'backend': spec.backend, 'precision': spec.precision, 'device': spec.device,
                            'reason': str(e)})
            bar.update()
            continue
        common = {**_parity(runner, spec, run.x, references, run.batch_sizes, run.loaded.trained),
                  **graph_notes(graphs.get(spec.graph), export_failures.get(spec.graph))}
        common['weight_bytes'] = runner.weight_bytes()  # reads the graph: once per runner
        for batch_size in run.batch_sizes:
            windows.append(Window(f'{spec.backend} {spec.precision} {spec.device} b{batch_size}', runner,
                                  runner.prepare(tile(run.x, batch_size))))
            results.append(make_row(spec.backend, spec.precision, spec.device, batch_size, **common))
        bar.update()
    return results, skipped, windows


def _ceilings(run: RunInputs, results: List[Row], activations: dict) -> dict:
    """The machine's ceilings, or why they are missing: they add to the report, and a failure there must not cost
    the timed rows."""
    try:
        moved = [bytes_moved(plain(r), activations['activation_bytes'] or 0) for r in results
                 if r.device == 'cpu' and r.weight_bytes]
        return measure_ceilings(
            run.threads, cpu_features(), moved,
            gpu=any(r.device != 'cpu' for r in results), quick=run.quick,
            openvino=importlib.util.find_spec('openvino') is not None)
    except Exception as e:
        return {'error': first_line(e)}


class References:
    """PyTorch eager's logits on the views in fp32 and fp64, and on the labelled views its accuracy: in both
    precisions, so that the two references' gates judge the same task on the same labelled views."""

    def __init__(self, model: torch.nn.Module, x: np.ndarray, labelled=None):
        self.fp32 = reference_logits(model, x, torch.float32)
        self.fp64 = reference_logits(model, x, torch.float64)
        self.labelled, self.accuracy = labelled, None
        if labelled is not None:
            self.labelled_fp32 = reference_logits(model, labelled[0], torch.float32)
            self.labelled_fp64 = reference_logits(model, labelled[0], torch.float64)
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
    common, accuracies = {}, {'fp32': None, 'fp64': None}
    if references.labelled is not None:
        views, labels = references.labelled[:2]
        labelled_logits = infer_in_batches(runner, views, batch_sizes)
        common['accuracy'] = parity.accuracy(labelled_logits, labels)  # on every labelled view
        accuracies = {name: parity.accuracy_figures(reference, labelled_logits, labels) for name, reference in
                      (('fp32', references.labelled_fp32), ('fp64', references.labelled_fp64))}
    common['parity'] = parity_figures(references.fp32, logits, 'torch fp32', spec.precision, trained,
                                      accuracies['fp32'])
    common['parity_fp64'] = parity_figures(references.fp64, logits, 'torch fp64', spec.precision, trained,
                                           accuracies['fp64'])
    return common


TOP_LAYERS = 8


def layer_profiles(rows: List[Row], windows: Sequence[Window], x: np.ndarray,
                   stages: Sequence[dict] = ()) -> List[dict]:
    """For the fastest row that passes its gates at each batch size, the time per layer from its runtime's own
    profiler (OpenVINO's performance counters, ONNX Runtime's profiling), top layers with their share, and every
    layer's time summed per stage of the model (``stages.stage_profile``)."""
    profiles = []
    for batch_size in sorted({r.batch_size for r in rows}):
        passing = passing_by_latency(rows, batch_size)
        if not passing:
            continue
        row = passing[0]
        runner = windows[next(i for i, r in enumerate(rows) if r is row)].runner
        layers = runner.layer_times(tile(x, batch_size))
        entry = {'batch_size': batch_size, 'backend': row.backend, 'precision': row.precision, 'device': row.device}
        if not layers:
            profiles.append({**entry, 'layers': None, 'reason': f'{row.backend} has no per-layer profiler here'})
            continue
        total = sum(layer['ms'] for layer in layers)
        profiles.append({**entry, 'total_ms': total, 'layer_count': len(layers),
                         'layers': [{**layer, 'share': layer['ms'] / total if total else 0.0}
                                    for layer in layers[:TOP_LAYERS]],
                         **stage_profile(getattr(runner, 'graph', None), layers, stages)})
    return profiles
