"""The report's files: report.json (the schema), report.md (the table a person reads), report.csv, PNG plots.

Everything is rendered in memory first, every file carries the same run id, and the files are saved as one set
with a manifest (``alexnet_zoo.manifest``): after an interrupted run this project's readers see the previous
report or the new one, never a mix, and ``--compare`` refuses a folder whose files do not belong together.
"""
import csv
import io
import json
import math
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

from alexnet_zoo.files import PathLike
from alexnet_zoo.manifest import save_set, verify
from export.parity import sqnr_text, verdict

from .plots import PLOTS, first_per_label, render_plots
from .summary import row_passed
from .uncertainty import change

# 2: parity on >= 256 views with near-ties, non-finite counts, accuracy gates, int8 remedies
# 3: interleaved timing rounds; median over rounds with 95 % intervals, paired speed-ups, noise
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)  # --compare reads p50 (1, 2) or the median and its interval (3), and SQNR
REPORT_FILES = ('report.md', 'report.csv', *PLOTS)
LATENCY_KEYS = ('mean', 'std', 'min', 'p50', 'p90', 'p95', 'p99', 'max')
PARITY_KEYS = ('views', 'max_abs_err', 'max_rel_err', 'sqnr_db', 'identical', 'nonfinite', 'cosine_min',
               'top1_agreement', 'decisive_top1_agreement', 'near_ties', 'near_tie_flips', 'top5_agreement',
               'judged', 'passed')


def row_key(row: dict):
    return row['backend'], row['precision'], row.get('device', 'cpu'), row['batch_size']


def finite(value: Any) -> Any:
    """JSON without NaN/Infinity (which strict parsers reject): a non-finite float becomes null. An SQNR of
    null means the logits were identical (no noise at all)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def read_report(path: PathLike, what: str = '--compare') -> dict:
    """An earlier report.json, checked enough to compare against; one clear line (naming ``what`` gave it) if it
    is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} file not found: {path}')
    try:  # first: a save interrupted while moving its files is finished, a mixed folder refused
        manifest = verify(path.parent, [path.name, *REPORT_FILES]) if path.name == 'report.json' else None
    except ValueError as e:
        raise ValueError(f'{what} {path} is in a folder that mixes reports: {e}') from None
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{what} {path} is not a benchmark report (not JSON: {e})') from None
    if not isinstance(report, dict) or report.get('schema_version') not in READABLE_SCHEMAS:
        raise ValueError(f'{what} {path} is not a benchmark report (no schema_version in {READABLE_SCHEMAS})')
    if manifest is not None and manifest.get('run_id') != report.get('run_id'):
        raise ValueError(f'{what} {path} is in a folder that mixes reports: report.json is run '
                         f'{report.get("run_id")}, its manifest.json run {manifest.get("run_id")}')
    rows = report.get('results')
    try:
        if not isinstance(rows, list):
            raise TypeError('no results list')
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError('a row is not an object')
            backend, precision, device, batch = row_key(row)
            if not all(isinstance(v, str) for v in (backend, precision, device)) or type(batch) is not int:
                raise TypeError('backend, precision and device must be text, batch_size a whole number')
            _check_figures(row)
        environment = report.get('environment') or {}
        if not isinstance(environment, dict) or not isinstance(environment.get('cpu', {}), dict):
            raise TypeError('environment is not an object')
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{what} {path} is not a benchmark report (bad results: {e})') from None
    return report


def _check_figures(row: dict) -> None:
    """The figures --compare reads: finite numbers (not text that looks like one), intervals of two, objects
    where objects are read (TypeError/ValueError naming the key if not)."""
    if not isinstance(row.get('latency_ms'), dict):
        raise TypeError('latency_ms is not an object')
    figures = [('latency_ms.p50', row['latency_ms'].get('p50'), False)]
    figures += [(key, row.get(key), True) for key in ('median_ms', 'speedup_vs_torch_fp32', 'throughput_ips')]
    parity = row.get('parity')
    if parity is not None:
        if not isinstance(parity, dict):
            raise TypeError('parity is not an object')
        figures += [(f'parity.{key}', parity.get(key), True) for key in ('sqnr_db', 'nonfinite')]
    for key in ('median_ci95_ms', 'speedup_ci95'):
        ci = row.get(key)
        if ci is not None:
            if not isinstance(ci, list) or len(ci) != 2:
                raise ValueError(f'{key} is not an interval [low, high]')
            figures += [(key, v, False) for v in ci]
            if _is_number(ci[0]) and _is_number(ci[1]) and ci[0] > ci[1]:
                raise ValueError(f'{key} is not an interval [low, high]')
    for key, value, optional in figures:
        if not (optional and value is None) and not _is_number(value):
            raise ValueError(f'{key} is not a finite number: {str(value)[:20]!r}')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def latency_of(row: dict):
    """A row's latency and its interval: the median over rounds (schema 3) or, from older reports, the p50 of one
    window, which has no interval."""
    if row.get('median_ms') is not None:
        return row['median_ms'], row.get('median_ci95_ms')
    return row['latency_ms']['p50'], None


def compare_reports(old: dict, new: dict, name: str) -> dict:
    """Rows of both reports side by side, matched by backend, precision, device and batch size.

    ``speedup`` = old / new latency (above 1: faster now). ``latency_change`` is 'faster' or 'slower' only where
    the two latency intervals do not overlap, else 'within noise'; ``speedup_change`` the same for the speed-ups
    over the baseline (ratios within each run, which a machine's slower minute does not move).
    """
    old_rows = {row_key(r): r for r in old['results']}
    new_rows = {row_key(r): r for r in new['results']}
    rows = []
    for key in list(new_rows) + [k for k in old_rows if k not in new_rows]:
        o, n = old_rows.get(key), new_rows.get(key)
        old_ms, old_ci = latency_of(o) if o else (None, None)
        new_ms, new_ci = latency_of(n) if n else (None, None)
        both = bool(o and n)
        rows.append({
            'backend': key[0], 'precision': key[1], 'device': key[2], 'batch_size': key[3],
            'old_ms': old_ms, 'new_ms': new_ms, 'old_ci95_ms': old_ci, 'new_ci95_ms': new_ci,
            'speedup': old_ms / new_ms if both and new_ms else None,
            'latency_change': change(old_ci, new_ci) if both else 'only in one report',
            'old_speedup_vs_torch_fp32': o.get('speedup_vs_torch_fp32') if o else None,
            'new_speedup_vs_torch_fp32': n.get('speedup_vs_torch_fp32') if n else None,
            'speedup_change': (change(o.get('speedup_ci95'), n.get('speedup_ci95'), 'lower', 'higher')
                               if both else 'only in one report'),
            'throughput_ratio': (n['throughput_ips'] / o['throughput_ips']
                                 if both and o.get('throughput_ips') else None),
            'old_sqnr_db': o['parity'].get('sqnr_db') if o and o.get('parity') else None,
            'new_sqnr_db': n['parity'].get('sqnr_db') if n else None,
            'old_sqnr': sqnr_text(o['parity']) if o and o.get('parity') else '–',
            'new_sqnr': sqnr_text(n['parity']) if n else '–',
        })
    return {'file': name, 'old_created_at': old.get('created_at'),
            'old_cpu': (old.get('environment') or {}).get('cpu', {}).get('model'), 'rows': rows}


def write_report(report: dict, output_dir: PathLike) -> Dict[str, Path]:
    """Render every file in memory with one run id, then save them as one set; returns name -> path."""
    output_dir = Path(output_dir)
    report.setdefault('run_id', uuid.uuid4().hex[:12])
    report = finite(report)
    files = {'report.json': (json.dumps(report, indent=2, allow_nan=False) + '\n').encode(),
             'report.md': render_markdown(report).encode(),
             'report.csv': render_csv(report).encode()}
    files.update(render_plots(report))

    def write(staging: Path) -> None:
        for name, data in files.items():
            (staging / name).write_bytes(data)

    save_set(output_dir, write, {'kind': 'benchmark report', 'run_id': report['run_id'],
                                 'created_at': report.get('created_at')})
    return {name: output_dir / name for name in files}


def comparison_lines(comparison: Optional[dict]) -> list:
    """report.md's section on an earlier report (``--compare``)."""
    if not comparison:
        return []
    lines = ['', f'## Compared with `{comparison["file"]}` ({comparison.get("old_created_at")}, '
                 f'{comparison.get("old_cpu")})', '',
             'ratio = old / new latency (above 1: faster now). A change is named only where the two 95 % '
             'intervals do not overlap; otherwise it is within noise. The speed-up over PyTorch eager fp32 is '
             'paired within each run, so a slower minute on one run does not move it.', '',
             '| backend | precision | device | batch | old ms | new ms | ratio | latency | old speed-up | '
             'new speed-up | speed-up | old SQNR | new SQNR |',
             '|' + ' --- |' * 13]
    for c in comparison['rows']:
        lines.append(f'| {c["backend"]} | {c["precision"]} | {c["device"]} | {c["batch_size"]} | '
                     f'{_fmt(c["old_ms"])} | {_fmt(c["new_ms"])} | '
                     f'{"–" if c["speedup"] is None else format(c["speedup"], ".2f") + "×"} | '
                     f'{c["latency_change"]} | {_fmt(c["old_speedup_vs_torch_fp32"], 1)} | '
                     f'{_fmt(c["new_speedup_vs_torch_fp32"], 1)} | {c["speedup_change"]} | '
                     f'{c["old_sqnr"]} | {c["new_sqnr"]} |')
    return lines


def _fmt(value: Optional[float], digits: int = 2, kind: str = 'f') -> str:
    return '–' if value is None else f'{value:.{digits}{kind}}'


def _percent(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.1%}'


def _row_notes(row: dict) -> list:
    """What a reader must know beside a row's figures: non-finite logits, int8 remedies, a failed export."""
    notes = []
    if row['parity'].get('nonfinite'):
        notes.append(f'**{row["parity"]["nonfinite"]} non-finite logits** (NaN or Inf): fails its gate')
    if row.get('float_layers'):
        notes.append(f'int8 with {", ".join(row["float_layers"])} kept in float (export.onnx\'s remedy)')
    if row.get('equalized'):
        notes.append(f'int8 after activation equalization of {", ".join(row["equalized"])} (function-preserving)')
    if row.get('export_failure'):
        notes.append(f'**the graph failed its gate at export** ({row["export_failure"]}); measured from the failed '
                     f'file, not written')
    return notes


def _gate(row: dict) -> str:
    text = verdict(row_passed(row))
    return f'**{text}**' if text == 'FAIL' else text


def _graphs_line(graphs: dict) -> str:
    where = f'`{graphs["folder"]}`' if graphs.get('folder') else 'a temporary folder'
    parts = []
    if graphs.get('exported'):
        parts.append(f'exported by export.onnx into {where} for this run ({", ".join(graphs["exported"])})')
    if graphs.get('reused'):
        parts.append(f'reused from {where} ({", ".join(graphs["reused"])})')
    return '- ONNX graphs: ' + ('; '.join(parts) if parts else 'none needed')


def render_markdown(report: dict) -> str:
    env, model, images = report['environment'], report['model'], report['images']
    settings, timing = report['settings'], report['settings']['timing']
    cpu = env['cpu']
    features = ', '.join(k for k, v in cpu['features'].items() if v) or 'none of AVX2/AVX-512/VNNI/AMX'
    gpu = env['gpu']['name'] if env.get('gpu') else 'none'
    weights = ('trained weights: parity gates judged' if model['trained']
               else 'random weights: parity gates not judged (near-tied logits)')
    lines = [
        f'# Benchmark report: {model["name"]}',
        '',
        f'- model: `{model["name"]}`, {model["num_classes"]} classes, weights from {model["source"]} ({weights}); '
        f'median top-1/top-2 logit margin {model["margin_std"]:.2f} std',
        f'- parity: {images.get("views", images["count"])} views (centre crops, random crops and flips) of '
        f'{images["count"]} {images["source"]}',
        _graphs_line(report.get('graphs') or {}),
        f'- machine: {cpu["model"]}, {cpu["usable_cores"]} cores ({features}), {env["memory_gb"]} GB, GPU: {gpu}; '
        f'{env["os"]}, Python {env["python"]}',
        f'- {report["created_at"]}, {report.get("duration_s", "?")} s' + (' (`--quick`)' if settings['quick'] else '')
        + (f'; run `{report["run_id"]}` (every file of this report carries it)' if report.get('run_id') else ''),
    ]
    if report.get('command'):
        lines.append(f'- command: `{report["command"]}`')
    data = report.get('data')
    if data:
        reference = (data.get('reference_accuracy') or {}).get('top1')
        lines.append(f'- accuracy on `{data["path"]}`: {data.get("views", data["count"])} views of {data["count"]} '
                     f'labelled images, {len(data["classes"])} classes' +
                     (f'; PyTorch fp32 top-1 {reference:.1%}, a row must keep '
                      f'{report["settings"].get("accuracy_min_ratio", 0.99):.0%} of it' if reference is not None else ''))
    lines += ['', '## Results', '',
              f'Latency in ms per batch: the median over {timing["rounds"]} interleaved rounds of each round\'s median, '
              'with its 95 % interval in brackets (the rounds\' interval widened by a stated run-to-run term of '
              f'{timing.get("run_to_run", 0):.0%}, for what persists over a whole run); CV = its coefficient of '
              'variation across rounds; p99 over every '
              'timed run. Speed-up = the median over rounds of PyTorch eager fp32\'s latency / this row\'s, both timed '
              'in the same round, at the same batch size, with its 95 % interval. Parity against PyTorch fp32 (SQNR; '
              'top-1 agreement on the decisive views, with the near-ties set aside and counted; max error relative '
              'to the largest logit) and against an fp64 PyTorch reference (SQNR). docs/export.md explains the '
              'gates; docs/benchmarks.md the rounds and intervals.', '']
    header = ['backend', 'precision', 'device', 'batch', 'median ms (95 % CI)', 'CV', 'p99 ms', 'images/s',
              'speed-up (95 % CI)', 'SQNR dB', 'top-1', 'near-ties', 'max rel err', 'SQNR fp64 dB']
    if data:
        header += ['acc top-1', 'acc top-5']
    header.append('gate')
    lines += ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for r in sorted(report['results'], key=lambda r: (r['batch_size'], r['median_ms'])):
        lat, p = r['latency_ms'], r['parity']
        cells = [r['backend'], r['precision'], r['device'], str(r['batch_size']),
                 f'{r["median_ms"]:.2f} ({_interval(r["median_ci95_ms"], "", 2)})', f'{r["cv"]:.0%}', _fmt(lat['p99']),
                 _fmt(r['throughput_ips'], 1), speedup_text(r['speedup_vs_torch_fp32'], r.get('speedup_ci95')),
                 sqnr_text(p), _percent(p.get('decisive_top1_agreement')), f'{p.get("near_ties", "–")}',
                 _fmt(p['max_rel_err'], 1, 'e'), sqnr_text(r['parity_fp64'])]
        if data:
            acc = r.get('accuracy') or {}
            cells += [f'{acc["top1"]:.0%}' if acc else '–', f'{acc["top5"]:.0%}' if acc else '–']
        cells.append(_gate(r))
        lines.append('| ' + ' | '.join(cells) + ' |')
    notes = [f'- {r["backend"]} {r["precision"]} ({r["device"]}): {note}'
             for r in first_per_label(report['results']).values() for note in _row_notes(r)]
    notes += [f'- batch {t["batch_size"]}: {t["rows"][0]} and {t["rows"][1]} cannot be ranked: the interval of '
              f'their per-round latency ratio, {_interval(t["ratio_ci95"], "", 3)}, includes 1'
              for t in report['summary'].get('ties', [])]
    if notes:
        lines += ['', *notes]

    summary = report['summary']
    lines += ['', '## Fastest row that passes its gates' if summary['gates_judged']
              else '## Fastest row (gates not judged)', '']
    for f in summary['fastest_passing']:
        speed = f['speedup_vs_torch_fp32']
        against = (f'{speedup_text(speed, f["speedup_ci95"])} PyTorch eager fp32 ({f["baseline_median_ms"]:.2f} ms)'
                   if speed else 'no PyTorch eager fp32 row to compare with')
        rank = ('' if f['ranked'] else f'; not told apart from {f["runner_up"]} (paired ratio '
                f'{_interval(f["runner_up_ratio_ci95"], "", 3)})')
        lines.append(f'- batch {f["batch_size"]}: {f["backend"]} {f["precision"]} ({f["device"]}), '
                     f'{f["median_ms"]:.2f} ms ({_interval(f["median_ci95_ms"], "", 2)}), {against}{rank}')
    if summary['gates_judged']:
        lines.append(f'- gates: {"all judged rows pass" if summary["passed"] else str(summary["rows_failed"]) + " row(s) FAIL"}')
    lines += _noise_lines(report)
    lines += _limits_lines(report)

    lines += ['', '## Skipped', '']
    if report['skipped']:
        lines += ['| backend | precision | device | reason |', '| --- | --- | --- | --- |']
        lines += [f'| {s["backend"]} | {s["precision"]} | {s["device"]} | {s["reason"]} |' for s in report['skipped']]
    else:
        lines.append('Nothing: every requested combination ran.')

    lines += comparison_lines(report.get('comparison'))

    lines += ['', '## What is timed', '',
              f'- timed region: {timing["timed_region"]}.',
              f'- every row warmed up once (at least {timing["warmup_iters"]} runs and {timing["warmup_s"]} s), then '
              f'{timing["rounds"]} rounds, each visiting every row once in an order shuffled by a generator seeded '
              f'with {timing["seed"]} (recorded in report.json): {timing["window_warmup_iters"]} untimed run, then '
              f'timed runs until at least {timing["min_iters"]} runs and {timing["seconds_per_row"]} s; one '
              f'perf_counter pair per run, garbage collector paused.',
              f'- intervals: {timing["interval"]}; the rounds\' interval covers the median with '
              f'{timing.get("interval_coverage", 0.95):.1%} at {timing["rounds"]} rounds; run-to-run relative SD: '
              f'{timing.get("run_to_run", 0):.0%}.',
              f'- {env["threads"]} compute threads for every backend, one stream: PyTorch set_num_threads, ONNX '
              f'Runtime intra-op threads (sequential), OpenVINO INFERENCE_NUM_THREADS with the LATENCY hint.',
              '- throughput = images per second over the summed timed runs.',
              '', '## Plots', '',
              '![latency per backend and precision](latency.png)', '',
              '![speed-up over PyTorch eager fp32](speedup.png)', '',
              '![latency vs batch size](latency_vs_batch.png)', '',
              '![parity](parity.png)', '',
              '## Software', '',
              ', '.join(f'{k} {v}' for k, v in env['packages'].items()), '']
    return '\n'.join(lines)


def _interval(ci, unit: str = '', digits: int = 1) -> str:
    return '–' if not ci else f'{ci[0]:.{digits}f}–{ci[1]:.{digits}f}{unit}'


def speedup_text(speedup: Optional[float], ci) -> str:
    """``6.1× (5.4–6.8)``."""
    if speedup is None:
        return '–'
    return f'{speedup:.1f}×' + (f' ({_interval(ci)})' if ci else '')


def _gops(value: Optional[float]) -> str:
    return '–' if value is None else f'{value / 1e9:.0f}'


def _limits_lines(report: dict) -> list:
    limits = report.get('limits')
    if not limits:
        return []
    if 'error' in limits:
        return ['', '## Against the machine\'s limits', '', f'Not measured: {limits["error"]}']
    lines = ['', '## Against the machine\'s limits', '',
             f'Measured in the same run ({limits["seconds"]} s): memory read '
             f'**{limits["memory_read_bytes_per_s"] / 1e9:.1f} GB/s** ({limits["memory_method"]}).']
    for precision, peak in limits['peak'].items():
        others = '; '.join(f'{name}: {value / 1e9:.0f}' for name, value in peak['measured'].items())
        lines.append(f'- peak {precision}: **{peak["ops_per_s"] / 1e9:.0f} GOP/s** (best of: {others})')
    lines += [f'- no {precision} ceiling: {reason}' for precision, reason in limits.get('peak_skipped', {}).items()]
    flops = report['model'].get('flops_per_image')
    lines += ['', f'The model: {flops / 1e9:.2f} GFLOPs per image (FlopCounterMode; 1 multiply-add = 2). A row\'s '
              'bound is the longer of reading its weights once at the measured bandwidth and computing its FLOPs '
              'at the measured peak of its precision; "× bound" is its median latency over that.', '',
              '| backend | precision | batch | median ms | GOP/s | weights MB | weights GB/s | ops per weight byte | '
              'bound | bound ms | × bound |', '|' + ' --- |' * 11]
    for r in sorted(report['results'], key=lambda r: (r['batch_size'], r['median_ms'])):
        f = r.get('roofline')
        if not f:
            continue
        lines.append(f'| {r["backend"]} | {r["precision"]} | {r["batch_size"]} | {r["median_ms"]:.2f} | '
                     f'{_gops(f["ops_per_s"])} | {r["weight_bytes"] / 1e6:.1f} | {f["weight_bytes_per_s"] / 1e9:.1f} | '
                     f'{f["intensity"]:.1f} | {f["bound"]} ({f["ceiling"] or "no peak"}) | {f["bound_ms"]:.2f} | '
                     f'{f["times_bound"]:.1f}× |')
    lines += ['', '![roofline](roofline.png)']
    for p in report.get('layer_profiles') or []:
        if 'error' in p:
            lines += ['', f'Per-layer times not measured: {p["error"]}']
            continue
        lines += ['', f'### Per layer: {p["backend"]} {p["precision"]} at batch {p["batch_size"]} (the fastest row)', '']
        if not p.get('layers'):
            lines.append(p.get('reason', 'no per-layer profile'))
            continue
        lines += [f'{p["total_ms"]:.2f} ms per inference in {p["layer_count"]} layers by the runtime\'s own profiler '
                  '(outside the timed rounds); the top ones:', '',
                  '| layer | type | kernel | ms | share |', '| --- | --- | --- | --- | --- |']
        lines += [f'| `{layer["name"]}` | {layer["type"]} | {layer["kernel"]} | {layer["ms"]:.2f} | {layer["share"]:.0%} |'
                  for layer in p['layers']]
    return lines


def _noise_lines(report: dict) -> list:
    noise = report.get('noise')
    if not noise:
        return []
    steal = noise.get('steal')
    cvs = ', '.join(f'{cv:.1%} at batch {b}' for b, cv in noise['baseline_cv'].items()) or 'no baseline row'
    lines = ['', '## How noisy the machine was', '',
             '- CPU steal time while timing (other guests of the hypervisor, from /proc/stat): '
             + ('not exposed here' if steal is None else f'{steal:.1%}'),
             f'- PyTorch eager fp32 across rounds (robust CV of its per-round medians: 1.4826 × MAD / median): '
             f'{cvs}',
             f'- rounds in which the typical row ran over 20 % slower than its usual: '
             f'{len(noise["noisy_rounds"])} of {len(noise["round_noise"])}'
             + (f' (rounds {", ".join(str(i + 1) for i in noise["noisy_rounds"])})' if noise['noisy_rounds'] else '')]
    if noise['warnings']:
        lines += ['', '**Too noisy to trust these figures:** ' + '; '.join(noise['warnings']) +
                  '. Run again on a quieter machine, or with more `--rounds`.']
    return lines


def render_csv(report: dict) -> str:
    fields = (['backend', 'precision', 'device', 'batch_size'] + [f'{k}_ms' for k in LATENCY_KEYS]
              + ['median_ms', 'median_ci95_low_ms', 'median_ci95_high_ms', 'cv', 'throughput_ips', 'iterations',
                 'speedup_vs_torch_fp32', 'speedup_ci95_low', 'speedup_ci95_high']
              + [f'parity_{k}' for k in PARITY_KEYS] + [f'parity_fp64_{k}' for k in PARITY_KEYS]
              + ['accuracy_top1', 'accuracy_top5', 'float_layers', 'equalized', 'export_failure', 'run_id'])
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, lineterminator='\n')
    writer.writeheader()
    for r in report['results']:
        row = {k: r[k] for k in ('backend', 'precision', 'device', 'batch_size', 'median_ms', 'cv', 'throughput_ips',
                                 'iterations', 'speedup_vs_torch_fp32')}
        row.update(median_ci95_low_ms=r['median_ci95_ms'][0], median_ci95_high_ms=r['median_ci95_ms'][1])
        if r.get('speedup_ci95'):
            row.update(speedup_ci95_low=r['speedup_ci95'][0], speedup_ci95_high=r['speedup_ci95'][1])
        row.update({f'{k}_ms': r['latency_ms'][k] for k in LATENCY_KEYS})
        row.update({f'parity_{k}': r['parity'].get(k) for k in PARITY_KEYS})
        row.update({f'parity_fp64_{k}': r['parity_fp64'].get(k) for k in PARITY_KEYS})
        row.update(float_layers=' '.join(r.get('float_layers') or []), equalized=' '.join(r.get('equalized') or []),
                   export_failure=r.get('export_failure', ''), run_id=report.get('run_id', ''))
        if r.get('accuracy'):
            row.update({'accuracy_top1': r['accuracy']['top1'], 'accuracy_top5': r['accuracy']['top5']})
        writer.writerow(row)
    return out.getvalue()
