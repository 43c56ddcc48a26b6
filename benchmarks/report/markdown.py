"""report.md and report.csv: the report rendered as text, the page a person reads and its rows for a spreadsheet.

Both render a report as report.json holds it (its plain values, ``schema.plain``), the same figures in each.
"""
import csv
import io
from typing import Optional

from alexnet_zoo.cli import printable
from export.parity import sqnr_text, verdict

from benchmarks.report.plots import first_per_label
from benchmarks.report.summary import row_passed

LATENCY_KEYS = ('mean', 'std', 'min', 'p50', 'p90', 'p95', 'p99', 'max')
PARITY_KEYS = ('views', 'max_abs_err', 'max_rel_err', 'sqnr_db', 'identical', 'nonfinite', 'cosine_min',
               'top1_agreement', 'decisive_top1_agreement', 'near_ties', 'near_tie_flips', 'top5_agreement',
               'judged', 'passed')


def comparison_lines(comparison: Optional[dict]) -> list:
    """report.md's section on an earlier report (``--compare``)."""
    if not comparison:
        return []
    said = lambda key: printable(str(comparison.get(key)))  # noqa: E731  (read from the earlier report's file)
    lines = ['', f'## Compared with `{said("file")}` ({said("old_created_at")}, {said("old_cpu")})', '',
             'ratio = old / new latency (above 1: faster now). A change is named only where the two 95 % '
             'intervals do not overlap; otherwise it is within noise. The speed-up over PyTorch eager fp32 is '
             'paired within each run, so a slower minute on one run does not move it.', '',
             '| backend | precision | device | batch | old ms | new ms | ratio | latency | old speed-up | '
             'new speed-up | speed-up | old SQNR | new SQNR |',
             '|' + ' --- |' * 13]
    for c in comparison['rows']:
        backend, precision, device, batch = (printable(str(c[key]))
                                             for key in ('backend', 'precision', 'device', 'batch_size'))
        lines.append(f'| {backend} | {precision} | {device} | {batch} | '
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
        apart = graphs.get('exported_apart')  # the folder keeps an earlier export's files: exported beside them
        parts.append(f'exported by export.onnx into {"a temporary folder" if apart else where} for this run ('
                     f'{", ".join(graphs["exported"])})' + (f': {where} keeps {", ".join(apart)}' if apart else ''))
    if graphs.get('reused'):
        parts.append(f'reused from {where} ({", ".join(graphs["reused"])})')
    return '- ONNX graphs: ' + ('; '.join(parts) if parts else 'none needed')


def render_markdown(report: dict) -> str:
    """report.md: the run, every row against its gates, the fastest passing rows, noise, limits, what was skipped
    and what is timed."""
    lines = _run_lines(report)
    lines += _results_lines(report)
    lines += _fastest_lines(report)
    lines += _noise_lines(report)
    lines += _ceilings_lines(report)
    lines += _skipped_lines(report)
    lines += comparison_lines(report.get('comparison'))
    lines += _timed_lines(report)
    return '\n'.join(lines)


def _run_lines(report: dict) -> list:
    """The page's head: what ran, on what and from which command, so that a reader can judge (and repeat) every
    figure below it."""
    env, model, images = report['environment'], report['model'], report['images']
    settings = report['settings']
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
    return lines


def _results_lines(report: dict) -> list:
    """Every row against its gates, fastest first at each batch size, and below the table what its cells cannot
    say: a row's notes, and the rows whose latencies cannot be ranked."""
    timing, data = report['settings']['timing'], report.get('data')
    lines = ['', '## Results', '',
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
    lines += [_result_row(r, data) for r in sorted(report['results'], key=lambda r: (r['batch_size'], r['median_ms']))]
    notes = [f'- {r["backend"]} {r["precision"]} ({r["device"]}): {note}'
             for r in first_per_label(report['results']).values() for note in _row_notes(r)]
    notes += [f'- batch {t["batch_size"]}: {t["rows"][0]} and {t["rows"][1]} cannot be ranked: the interval of '
              f'their per-round latency ratio, {_interval(t["ratio_ci95"], "", 3)}, includes 1'
              for t in report['summary'].get('ties', [])]
    if notes:
        lines += ['', *notes]
    return lines


def _result_row(r: dict, data: Optional[dict]) -> str:
    """One row of the results table; the accuracy cells only where the run had labelled data, as in its header."""
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
    return '| ' + ' | '.join(cells) + ' |'


def _fastest_lines(report: dict) -> list:
    """The answer most readers come for, at each batch size, with whether it is told apart from the runner-up and
    what bounds it; a row that fails its gates is no answer."""
    summary = report['summary']
    lines = ['', '## Fastest row that passes its gates' if summary['gates_judged']
             else '## Fastest row (gates not judged)', '']
    for f in summary['fastest_passing']:
        speed = f['speedup_vs_torch_fp32']
        against = (f'{speedup_text(speed, f["speedup_ci95"])} PyTorch eager fp32 ({f["baseline_median_ms"]:.2f} ms)'
                   if speed else 'no PyTorch eager fp32 row to compare with')
        rank = ('' if f['ranked'] else f'; not told apart from {f["runner_up"]} (paired ratio '
                f'{_interval(f["runner_up_ratio_ci95"], "", 3)})')
        lines.append(f'- batch {f["batch_size"]}: {f["backend"]} {f["precision"]} ({f["device"]}), '
                     f'{f["median_ms"]:.2f} ms ({_interval(f["median_ci95_ms"], "", 2)}), {against}{rank}')
        if f.get('bound'):
            lines.append(f'  - what bounds it now: {f["bound"]}')
    if summary['gates_judged']:
        lines.append(f'- gates: {"all judged rows pass" if summary["passed"] else str(summary["rows_failed"]) + " row(s) FAIL"}')
    return lines


def _skipped_lines(report: dict) -> list:
    """What was asked for and did not run, with why: a missing row must not read as a slow or failing one."""
    lines = ['', '## Skipped', '']
    if report['skipped']:
        lines += ['| backend | precision | device | reason |', '| --- | --- | --- | --- |']
        lines += [f'| {s["backend"]} | {s["precision"]} | {s["device"]} | {s["reason"]} |' for s in report['skipped']]
    else:
        lines.append('Nothing: every requested combination ran.')
    return lines


def _timed_lines(report: dict) -> list:
    """What is inside the timed region and how the rounds ran, then the plots and software: a latency means
    nothing without them."""
    env, timing = report['environment'], report['settings']['timing']
    return ['', '## What is timed', '',
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


def _interval(ci, unit: str = '', digits: int = 1) -> str:
    return '–' if not ci else f'{ci[0]:.{digits}f}–{ci[1]:.{digits}f}{unit}'


def speedup_text(speedup: Optional[float], ci) -> str:
    """``6.1× (5.4–6.8)``."""
    if speedup is None:
        return '–'
    return f'{speedup:.1f}×' + (f' ({_interval(ci)})' if ci else '')


def _tops(value: Optional[float]) -> str:
    return '–' if value is None else f'{value / 1e12:.2f}'


def _ceilings_lines(report: dict) -> list:
    """Each row's speed against what this machine can reach, measured in the same run, then where the fastest rows
    spend their time: a speed-up alone does not say how much is left."""
    ceilings = report.get('ceilings')
    if not ceilings:
        return []
    title = ['', '## Against the machine\'s ceilings', '']
    if 'error' in ceilings:
        return [*title, f'Not measured: {ceilings["error"]}']
    lines = title
    for device, c in ceilings.items():
        lines += _device_ceiling_lines(device, c)
    return lines + _roofline_lines(report) + _layer_profile_lines(report)


def _device_ceiling_lines(device: str, c: dict) -> list:
    """A device's documented, attainable and probed compute rates and its memory read rates, every probe shown, so
    that a reader can see how far the attainable rate falls short of the documented one."""
    clock = (f', clock {c["clock_ghz"]} GHz under load ({c["clock_method"]}; the system reports '
             f'{c["nominal_ghz"]} GHz)' if c.get('clock_ghz') else '')
    lines = [f'{c["name"]} ({device}{clock}), measured in the same run ({c["seconds"]} s). Compute in TOP/s '
             '(a multiply-add is 2):', '', '| precision | documented | how | attainable | best probe | every probe |',
             '| --- | --- | --- | --- | --- | --- |']
    for precision, f in c['compute'].items():
        probes = '; '.join(f'{name}: {value / 1e12:.2f}' for name, value in f['measured'].items())
        lines.append(f'| {precision} | {_tops(f["documented"])} | {f["documented_basis"]} | '
                     f'{_tops(f["attainable"])} | {f["attainable_method"] or "–"} | {probes} |')
    memory = c['memory']
    reads = [f'DRAM {memory["dram"]["bytes_per_s"] / 1e9:.1f} GB/s ({memory["dram"]["method"]})'] if memory['dram'] else []
    reads += [f'last-level cache at {f["working_set"] / 1e6:.1f} MB {f["bytes_per_s"] / 1e9:.1f} GB/s'
              for f in {f['working_set']: f for f in memory['llc'].values()}.values()]
    llc = f'{memory["llc_bytes"] / 2 ** 20:.0f} MiB' if memory.get('llc_bytes') else 'unknown'
    lines += ['', f'Memory read: {"; ".join(reads) or "not measured"} (last-level cache {llc}).']
    lines += [f'- not measured: {what}: {reason}' for what, reason in c['skipped'].items()]
    lines.append('')
    return lines


def _roofline_lines(report: dict) -> list:
    """Every row against the longer of its compute and its memory bound, so that a slow row reads as compute- or
    memory-bound, or as far from both."""
    lines = [f'The model: {_model_bytes_text(report["model"])}. A row\'s bound is the longer of computing its '
             'FLOPs at the attainable rate of its precision and moving its bytes (its weights once, and the batch\'s '
             'activations at its precision: 4 bytes an element in fp32, 2 in fp16 and bf16, 1 in int8) at the read '
             'rate of where they fit (the last-level cache, else DRAM); "× bound" is its median latency over that, '
             '"of documented" its rate over the documented one.', '',
             '| backend | precision | batch | median ms | TOP/s | of documented | weights MB | bytes MB | GB/s | '
             'ops per byte | bound | bound ms | × bound |', '|' + ' --- |' * 13]
    for r in sorted(report['results'], key=lambda r: (r['batch_size'], r['median_ms'])):
        f = r.get('roofline')
        if not f:
            continue
        share = f'{f["share_of_documented"]:.0%}' if f['share_of_documented'] else '–'
        bound = f'{f["bound"]} ({f["ceiling"] if f["bound"] == "compute" else f["memory"]})' if f['bound'] else '–'
        where = '' if r['device'] == 'cpu' else f' ({r["device"]})'
        lines.append(f'| {r["backend"]}{where} | {r["precision"]} | {r["batch_size"]} | {r["median_ms"]:.2f} | '
                     f'{_tops(f["ops_per_s"])} | {share} | {r["weight_bytes"] / 1e6:.1f} | {f["bytes"] / 1e6:.1f} | '
                     f'{f["bytes_per_s"] / 1e9:.1f} | {f["intensity"]:.1f} | {bound} | '
                     f'{f["bound_ms"] or 0:.2f} | {f["times_bound"] or 0:.1f}× |')
    return lines + ['', '![roofline](roofline.png)']


def _layer_profile_lines(report: dict) -> list:
    """Where the fastest row at each batch size spends its time, by layer and by stage of the model: what to
    optimise next."""
    lines = []
    stages = ', '.join(s['module'] + (f' (÷{s["reduction"]})' if s['reduction'] else '')
                       for s in report['model'].get('stages') or [])
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
        if p.get('stages'):
            lines += ['', f'Every layer by stage (the model\'s feature_info: {stages}; a stage runs from the end of the '
                      'one before to the end of its module), each layer mapped to its module through the ONNX '
                      'graph\'s node metadata; unmapped: layers the runtime added, named after no node (ONNX '
                      'Runtime\'s layout reorders):', '', '| stage | reduction | layers | ms | share |', '|' + ' --- |' * 5]
            lines += [f'| {s["stage"]} | {"÷" + str(s["reduction"]) if s["reduction"] else "–"} | {s["layers"]} | '
                      f'{s["ms"]:.2f} | {s["share"]:.0%} |' for s in p['stages']]
        elif p.get('stages_reason'):
            lines += ['', f'No per-stage times: {p["stages_reason"]}.']
    return lines


def _model_bytes_text(model: dict) -> str:
    """The model's FLOPs and activation bytes per image, and how they were counted."""
    text = f'{model["flops_per_image"] / 1e9:.2f} GFLOPs per image (FlopCounterMode; 1 multiply-add = 2)'
    count, source = model.get('activation_bytes'), model.get('activation_bytes_source')
    if count:
        return (f'{text} and {count / 1e6:.1f} MB of activations per image in fp32 (the input and output of its '
                f'convolutions, matrix products and pooling, on {source})')
    return f'{text}; activations not counted ({source or "a report from before they were"}): weights only'


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
    """report.csv: one line per row, every latency and parity figure in its own column."""
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
