"""The serving report of ``benchmarks.serve.benchmark``: serve.json, serve.md and serve.png, rendered and saved as one set.

A run the server left is saved too, marked ``"complete": false``, so that what was measured before it stopped is
not lost.
"""
import json
from pathlib import Path
from typing import List, Optional

from alexnet_zoo.manifest import save_set

from benchmarks.report.plots import png, pyplot

SCHEMA = 1


def agreement(names: List[str], local: List[int], served: List[int]) -> dict:
    """How many images the server gave the runner's own top-1, and which it did not."""
    differ = [n for n, a, b in zip(names, local, served) if a != b]
    return {'images': len(names), 'same_top1': len(names) - len(differ), 'differ': differ}


def served_as_expected(report: dict) -> bool:
    """Every photograph's top-1 the runner's own over both protocols, both bad requests refused, the next served."""
    bad = report['bad_requests']
    return (all(c['same_top1'] == c['images'] for c in report['check'].values())
            and bad['wrong shape'] != 'accepted' and bad['wrong type'] != 'accepted' and bad['served after'])


def ours_over(level: dict) -> Optional[dict]:
    """Our closed loop's figures over perf_analyzer's over the same protocol (gRPC) at the same concurrency: 1.0 is
    perfect agreement."""
    pa = (level.get('perf_analyzer') or {}).get('grpc') or {}
    if 'error' in pa or not pa or not level['latency_ms']:
        return None
    return {'throughput': level['throughput_ips'] / pa['throughput_ips'],
            'p50': level['latency_ms']['p50'] / pa['latency_ms']['p50'],
            'p99': level['latency_ms']['p99'] / pa['latency_ms']['p99']}


def write_serve_report(report: dict, output_dir: Path) -> None:
    """serve.json, serve.md and serve.png, saved as one set (a partial run's too, marked incomplete)."""
    files = {'serve.json': (json.dumps(report, indent=2) + '\n').encode(), 'serve.md': render_markdown(report).encode()}
    if report['levels']:
        files['serve.png'] = render_plot(report)
    if (report.get('sweep') or {}).get('rows'):
        files['serve_sweep.png'] = render_sweep_plot(report)

    def write(staging: Path) -> None:
        for name, data in files.items():
            (staging / name).write_bytes(data)

    save_set(output_dir, write, {'kind': 'serving report', 'created_at': report['created_at'],
                                 'complete': report['complete']})


def render_markdown(report: dict) -> str:
    served = report['served']
    lines = [f'# {served["name"]} served by Triton', '',
             f'{served["server"]}; dynamic batching up to {served["max_batch_size"]} (preferred '
             f'{served["preferred_batch_size"]}, queue delay {served["max_queue_delay_us"]} µs), '
             f'{served["instances"]} instance; {report["machine"]["cpu"]}, {report["machine"]["threads"]} threads. '
             f'Started in {served.get("start_seconds", "–")} s.', '']
    if not report['complete']:
        lines += ['**Incomplete: the run stopped early (see the last row, and the server\'s last log lines in '
                  'serve.json).**', '']
    skipped = (report.get('perf_analyzer') or {}).get('skipped')
    if skipped:
        lines += [f'**Partial: perf_analyzer not run ({skipped}); only our closed loop measured the load.**', '']
    for protocol, check in report.get('check', {}).items():
        lines.append(f'- {protocol}: {check["same_top1"]}/{check["images"]} photographs with the runner\'s own top-1'
                     + (f' (differ: {", ".join(check["differ"])})' if check['differ'] else ''))
    for what, answer in report.get('bad_requests', {}).items():
        lines.append(f'- {what}: {answer}')
    lines += ['', '| clients | requests | errors | images/s | p50 ms | p90 ms | p99 ms | batches formed (size: count) '
                  '| mean batch |', '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |']
    for level in report['levels']:
        ms = level['latency_ms'] or {}
        batches = ', '.join(f'{size}: {count}' for size, count in level['batches'].items()) or '–'
        lines.append(f'| {level["concurrency"]} | {level["requests"]} | {level["errors"]} | '
                     f'{level["throughput_ips"]:.1f} | {_ms(ms.get("p50"))} | {_ms(ms.get("p90"))} | '
                     f'{_ms(ms.get("p99"))} | {batches} | '
                     f'{"–" if level["mean_batch"] is None else format(level["mean_batch"], ".1f")} |')
    return '\n'.join(lines + _perf_analyzer_lines(report) + _sweep_lines(report)) + '\n'


def _perf_analyzer_lines(report: dict) -> List[str]:
    """perf_analyzer's view beside ours: the client's latency and the server's queue and compute times."""
    skipped = (report.get('perf_analyzer') or {}).get('skipped')
    if skipped:
        return ['', f'perf_analyzer: not run ({skipped}).']
    lines = ['', '## perf_analyzer (Triton\'s load generator), the same concurrency levels', '',
             '| clients | protocol | images/s | p50 ms | p90 ms | p95 ms | p99 ms | server queue ms | server compute ms '
             '| ours / perf_analyzer (images/s, p50, p99) |', '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |']
    for level in report['levels']:
        ratio = level.get('ours_over_perf_analyzer')
        for protocol, pa in (level.get('perf_analyzer') or {}).items():
            if 'error' in pa:
                lines.append(f'| {level["concurrency"]} | {protocol} | {pa["error"]} |||||||')
                continue
            ms, server = pa['latency_ms'], pa['server_ms']
            compute = sum(v for k, v in server.items() if k.startswith('compute'))
            ours = (f'{ratio["throughput"]:.2f}, {ratio["p50"]:.2f}, {ratio["p99"]:.2f}'
                    if ratio and protocol == 'grpc' else '')
            lines.append(f'| {level["concurrency"]} | {protocol} | {pa["throughput_ips"]:.1f} | {_ms(ms.get("p50"))} | '
                         f'{_ms(ms.get("p90"))} | {_ms(ms.get("p95"))} | {_ms(ms.get("p99"))} | '
                         f'{_ms(server.get("queue"))} | {compute:.1f} | {ours} |')
    return lines


def _sweep_lines(report: dict) -> List[str]:
    """The settings sweep: every configuration measured (by perf_analyzer, or our closed loop), and the one chosen
    under the budget."""
    sweep = report.get('sweep')
    if not sweep:
        return []
    if sweep.get('skipped'):
        return ['', f'Settings sweep: not run ({sweep["skipped"]}).']
    by = sweep.get('measured_by', 'perf_analyzer')
    lines = ['', f'## Settings sweep ({by}, gRPC, {sweep["concurrency"]} clients; p99 budget '
                 f'{sweep["p99_budget_ms"]:g} ms)', '',
             '| max batch | preferred | queue delay µs | instances | images/s | p50 ms | p99 ms | server queue ms | |',
             '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |']
    for row in sweep['rows']:
        head = (f'| {row["max_batch"]} | {row["preferred"]} | {row["max_queue_delay_us"]} | {row["instances"]} |')
        if 'error' in row:
            lines.append(f'{head} {row["error"]} |||||')
            continue
        chosen = '**chosen**' if row is sweep['chosen'] or row == sweep['chosen'] else ''
        lines.append(f'{head} {row["throughput_ips"]:.1f} | {_ms(row["latency_ms"]["p50"])} | '
                     f'{_ms(row["latency_ms"]["p99"])} | {_ms(row.get("server_ms", {}).get("queue"))} | {chosen} |')
    lines += ['', f'Chosen: {sweep["verdict"]}.']
    if sweep.get('written'):
        lines.append(f'Written into {sweep["repository"]}: {", ".join(sweep["written"])} (config.pbtxt).')
    return lines + ['', '![sweep](serve_sweep.png)']


def render_sweep_plot(report: dict) -> bytes:
    """Throughput against p99 for each configuration of the sweep, the budget as a line, the choice circled."""
    plt = pyplot()
    sweep = report['sweep']
    rows = [r for r in sweep['rows'] if 'error' not in r]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for row in rows:
        ax.scatter(row['latency_ms']['p99'], row['throughput_ips'], color='tab:blue', zorder=3)
        ax.annotate(f' b{row["max_batch"]} d{row["max_queue_delay_us"]} i{row["instances"]}',
                    (row['latency_ms']['p99'], row['throughput_ips']), fontsize=7)
    if sweep['chosen']:
        ax.scatter(sweep['chosen']['latency_ms']['p99'], sweep['chosen']['throughput_ips'], s=160,
                   facecolors='none', edgecolors='tab:green', zorder=4, label='chosen')
    ax.axvline(sweep['p99_budget_ms'], color='tab:red', linestyle='--', label=f'p99 budget {sweep["p99_budget_ms"]:g} ms')
    ax.set_xlabel('p99 latency (ms)')
    ax.set_ylabel('images/s')
    ax.legend(fontsize=7)
    ax.set_title(f'{report["served"]["name"]}: Triton settings, {sweep["concurrency"]} clients', fontsize=10)
    fig.tight_layout()
    return png(fig, f'alexnet-zoo settings sweep, {report["served"]["name"]}')


def _ms(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.1f}'


def render_plot(report: dict) -> bytes:
    plt = pyplot()
    levels = [level for level in report['levels'] if level['latency_ms']]
    clients = [level['concurrency'] for level in levels]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(clients, [level['throughput_ips'] for level in levels], 'o-', color='tab:blue')
    ax.set_xlabel('concurrent clients')
    ax.set_ylabel('images/s', color='tab:blue')
    ax.set_xscale('log', base=2)
    other = ax.twinx()
    other.plot(clients, [level['latency_ms']['p99'] for level in levels], 's--', color='tab:red')
    other.set_ylabel('p99 latency (ms)', color='tab:red')
    ax.set_title(f'{report["served"]["name"]} behind Triton', fontsize=10)
    fig.tight_layout()
    return png(fig, f'alexnet-zoo serving report, {report["served"]["name"]}')
