"""Interleaved timing rounds and the statistics on them, checked on synthetic timings: known medians and
intervals, a noisy phase injected into some rounds, the seeded shuffled order, paired speed-ups, rankings,
noise warnings and ``--compare``'s significance. Nothing here asserts how fast anything runs."""
import json
import math
import re

import numpy as np
import pytest

from alexnet_zoo.cli import UsageError
from benchmarks.run.harness import timing_config
from benchmarks.measure.latency import QUICK_TIMING, TimingConfig, Window, round_figures, time_rounds
from benchmarks.report.compare import compare_reports
from benchmarks.report.markdown import render_markdown
from benchmarks.report.files import read_report
from benchmarks.report.schema import SCHEMA_VERSION, Report, decode, encode, make_row, plain, read_back, updated
from benchmarks.report.summary import add_noise, add_speedups
from benchmarks.measure.uncertainty import (change, cpu_times, median_ci, median_ci_rank, noise_warnings, paired_ratios,
                                    robust_cv, round_noise, steal_fraction, widen)
from export.runner import Runner


def test_median_interval_ranks_match_the_binomial():
    assert median_ci_rank(15) == (4, pytest.approx(1 - 2 * 576 / 2 ** 15))  # P(Bin(15, 1/2) <= 3) = 576 / 2^15
    assert median_ci_rank(10) == (2, pytest.approx(1 - 2 * 11 / 2 ** 10))
    assert median_ci_rank(6) == (1, pytest.approx(1 - 2 / 2 ** 6))
    assert median_ci_rank(5) == (1, pytest.approx(1 - 2 / 2 ** 5))  # below 6 rounds: [min, max], 93.75 %
    with pytest.raises(ValueError):
        median_ci_rank(0)


def test_median_interval_known_values():
    figures = median_ci(list(range(15, 0, -1)))
    assert figures['median'] == 8 and figures['ci95'] == [4, 12]
    assert figures['cv'] == pytest.approx(np.std(range(1, 16), ddof=1) / 8)
    assert median_ci([3.0])['ci95'] == [3.0, 3.0] and median_ci([3.0])['cv'] == 0


def test_median_interval_covers_the_true_median_95_percent_of_the_time():
    """Skewed timings (lognormal, like latencies): the interval holds the true median in 95-98 % of 4000 runs."""
    rng = np.random.default_rng(0)
    true_median = 10.0
    hits = sum(median_ci_lo <= true_median <= median_ci_hi
               for median_ci_lo, median_ci_hi in (median_ci(true_median * rng.lognormal(0, 0.3, 15))['ci95']
                                                  for _ in range(4000)))
    assert 0.95 <= hits / 4000 <= 0.98


def synthetic_rounds(rounds=15, slow=range(3, 7), factor=2.0, seed=1):
    """Per-round medians of a baseline at 20 ms and a row at 4 ms (5x), 3 % jitter, every row twice as slow in
    the rounds ``slow`` (another tenant's busy minute)."""
    rng = np.random.default_rng(seed)
    phase = np.array([factor if r in slow else 1.0 for r in range(rounds)])
    base = 20 * phase * rng.normal(1, 0.03, rounds)
    fast = 4 * phase * rng.normal(1, 0.03, rounds)
    return base.tolist(), fast.tolist()


def test_run_to_run_term_widens_each_side():
    figures = median_ci([9.0, 10.0, 12.0, 10.0, 11.0, 9.5, 10.5])  # 7 rounds: [min, max]
    assert figures['ci95'] == [9.0, 12.0] and figures['median'] == 10.0
    wide = widen(figures, 0.05)
    extra = 1.959964 * math.log(1.05)
    assert wide['ci95'] == pytest.approx([10 * math.exp(-math.hypot(math.log(10 / 9), extra)),
                                          10 * math.exp(math.hypot(math.log(12 / 10), extra))])
    assert widen(figures, 0.9)['ci95'][0] > 0  # a large term still keeps the interval above zero
    assert wide['ci95_rounds'] == [9.0, 12.0] and widen(figures, 0.0)['ci95'] == [9.0, 12.0]


def test_run_to_run_term_in_speedups_and_rankings():
    """Two rows 5 % apart with 1 % jitter: ranked on the rounds alone, not once a 6 % run-to-run term is stated;
    the baseline's own speed-up stays exactly 1."""
    rng = np.random.default_rng(5)
    base = (20 * rng.normal(1, 0.01, 15)).tolist()
    a, b = (4 * rng.normal(1, 0.01, 15)).tolist(), (4.2 * rng.normal(1, 0.01, 15)).tolist()
    rows = [('torch', 'fp32', base), ('openvino', 'int8', a), ('onnxruntime', 'int8', b)]
    tight, wide = synthetic_report(rows), synthetic_report(rows, run_to_run=0.06)
    assert tight['summary']['ties'] == [] and tight['summary']['fastest_passing'][0]['ranked']
    assert len(wide['summary']['ties']) == 1 and not wide['summary']['fastest_passing'][0]['ranked']
    assert wide['results'][0]['speedup_ci95'] == [1.0, 1.0]
    speedup = wide['results'][1]
    assert speedup['speedup_ci95'][0] < speedup['speedup_ci95_rounds'][0] <= speedup['speedup_vs_torch_fp32']
    assert speedup['speedup_ci95'][1] / speedup['speedup_ci95'][0] > math.exp(2 * 1.96 * math.log(1.06))


def test_paired_speedup_cancels_a_noisy_phase():
    base, fast = synthetic_rounds()
    speedup = median_ci(paired_ratios(base, fast))
    assert speedup['ci95'][0] <= 5.0 <= speedup['ci95'][1]
    assert speedup['ci95'][1] - speedup['ci95'][0] < 0.5 and speedup['cv'] < 0.06
    # the latencies themselves carry the busy phase: their spread is several times the ratio's
    assert median_ci(base)['cv'] > 5 * speedup['cv']
    # a ratio of unpaired figures (fast rows measured in the slow phase) would be off by the phase's factor
    assert np.median(base[7:]) / np.median(fast[3:7]) < 3
    with pytest.raises(ValueError):
        paired_ratios(base, fast[:-1])


def test_round_noise_names_the_busy_rounds_and_warns():
    base, fast = synthetic_rounds()
    noise = round_noise([base, fast])
    assert [i for i, v in enumerate(noise) if v > 1.2] == [3, 4, 5, 6]
    # a busy phase in 4 of 15 rounds: named by the rounds, while the baseline's robust spread ignores the bursts
    assert robust_cv(base) < 0.1 < median_ci(base)['cv']
    assert noise_warnings(0.0, {1: robust_cv(base)}, noise) == ['4 of 15 rounds ran more than 20% slower than usual']
    quiet_base, quiet_fast = synthetic_rounds(slow=())
    assert noise_warnings(0.01, {1: robust_cv(quiet_base)}, round_noise([quiet_base, quiet_fast])) == []
    jittery = (20 * np.random.default_rng(2).normal(1, 0.2, 15)).tolist()
    assert 'baseline at batch 32' in noise_warnings(0.0, {32: robust_cv(jittery)}, [1.0] * 15)[0]
    assert 'steal' in noise_warnings(0.08, {}, [1.0] * 15)[0]


def test_steal_fraction_from_cpu_counters():
    before = [100, 0, 50, 800, 0, 0, 0, 50]
    after = [200, 0, 100, 1600, 0, 0, 0, 100]
    assert steal_fraction(before, after) == pytest.approx(50 / 1000)
    assert steal_fraction(None, after) is None and steal_fraction(before, before) == 0.0
    counters = cpu_times()
    assert counters is None or (len(counters) == 8 and all(isinstance(v, int) and v >= 0 for v in counters))


def test_change_only_where_intervals_do_not_overlap():
    assert change([10, 12], [7, 9]) == 'faster' and change([10, 12], [13, 14]) == 'slower'
    assert change([10, 12], [11.5, 13]) == 'within noise' and change(None, [1, 2]) == 'no interval'
    assert change([4, 5], [6, 7], 'lower', 'higher') == 'higher'


class Clock(Runner):
    """Runs in no time; appends its name to a shared log on every run."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def prepare(self, x):
        return x

    def run(self, prepared):
        self.log.append(self.name)


def test_rounds_visit_every_row_once_in_seeded_shuffled_order():
    log = []
    windows = [Window(name, Clock(name, log), None) for name in 'abcde']
    timing = TimingConfig(rounds=6, seconds_per_row=0, min_iters=3, window_warmup_iters=1, warmup_iters=2,
                          warmup_s=0, seed=7)
    rounds = time_rounds(windows, timing)
    assert log[:10] == [name for name in 'abcde' for _ in range(2)]  # warm-up, once per row, in order
    timed = log[10:]
    assert len(timed) == 6 * 5 * 4  # rounds x rows x (window warm-up + min_iters)
    visited = [timed[i] for i in range(0, len(timed), 4)]
    assert visited == ['abcde'[i] for visit in rounds.order for i in visit]
    assert all(sorted(visit) == list(range(5)) for visit in rounds.order)
    assert len({tuple(visit) for visit in rounds.order}) > 1, 'the order is shuffled, not fixed'
    assert [[len(t) for t in row] for row in rounds.times_ms] == [[3] * 6] * 5
    assert time_rounds(windows, timing).order == rounds.order  # the seed decides the order
    assert time_rounds(windows, TimingConfig(**{**timing.__dict__, 'seed': 8})).order != rounds.order
    assert rounds.labels == list('abcde') and len(rounds.steal) == 6


def test_round_figures_from_known_windows():
    times = [[1.0, 2.0, 9.0], [3.0, 4.0, 5.0], [2.0, 2.0, 2.0], [6.0, 7.0, 8.0], [1.0, 1.0, 1.0], [4.0, 4.0, 4.0]]
    figures = round_figures(times, batch_size=2)
    assert figures['round_medians_ms'] == [2, 4, 2, 7, 1, 4]
    assert figures['median_ms'] == 3 and figures['median_ci95_ms'] == [1, 7]
    assert figures['iterations'] == 18 and figures['latency_ms']['max'] == 9


def synthetic_report(rows, run_to_run=0.0):
    """A report from (backend, precision, per-round medians) at batch 1, gates passed, as report.json holds it:
    each row made and timed as the harness does, the summary's steps each returning a new report."""
    results = [updated(make_row(backend, precision, 'cpu', 1, {'passed': True}, {'passed': True}, None),
                       **round_figures([[m] for m in medians], 1, run_to_run))
               for backend, precision, medians in rows]
    report = Report(schema_version=SCHEMA_VERSION, results=results, timing={'steal': 0.0},
                    settings={'timing': {'run_to_run': run_to_run}})
    enriched = add_noise(add_speedups(report))
    assert report.summary is None and report.results[0].speedup_vs_torch_fp32 is None  # the input is left as it was
    return plain(enriched)


def test_speedups_rankings_and_fastest_row():
    base, fast = synthetic_rounds(slow=())
    twin = (np.array(fast) * np.random.default_rng(3).normal(1, 0.03, 15)).tolist()
    report = synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', fast), ('onnxruntime', 'int8', twin)])
    rows = {r['backend']: r for r in report['results']}
    assert rows['torch']['speedup_vs_torch_fp32'] == 1 and rows['torch']['speedup_ci95'] == [1, 1]
    assert rows['openvino']['speedup_ci95'][0] <= 5 <= rows['openvino']['speedup_ci95'][1]
    # two rows within 3 % jitter of each other cannot be ranked, and the fastest row says so
    assert report['summary']['ties'][0]['rows'] == sorted(['openvino int8', 'onnxruntime int8'],
                                                           key=lambda n: rows[n.split()[0]]['median_ms'])
    fastest = report['summary']['fastest_passing'][0]
    assert not fastest['ranked'] and fastest['runner_up'] in ('openvino int8', 'onnxruntime int8')
    assert 'torch fp32' not in rows['openvino']['not_separable_from']
    markdown = render_markdown_stub(report)
    assert 'cannot be ranked' in markdown and 'not told apart' in markdown
    # a clearly slower neighbour is ranked
    report = synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', fast),
                               ('onnxruntime', 'int8', (np.array(twin) * 1.5).tolist())])
    assert report['summary']['ties'] == [] and report['summary']['fastest_passing'][0]['ranked']
    assert report['noise']['trusted'] and report['noise']['noisy_rounds'] == []


def render_markdown_stub(report):
    """report.md of a synthetic report."""
    return render_markdown(complete(report))


def complete(report):
    """A synthetic report with the few fields the renderers need besides the figures."""
    for r in report['results']:
        r['latency_ms'].update(p99=r['latency_ms']['max'])
        r['parity'].update(sqnr_db=40.0, max_rel_err=1e-3)
        r['parity_fp64'].update(sqnr_db=40.0)
    report.update(
        environment={'cpu': {'model': 'cpu', 'usable_cores': 2, 'features': {}}, 'memory_gb': 1, 'os': 'os',
                     'python': '3', 'threads': 2, 'packages': {}},
        model={'name': 'alexnet_bn', 'num_classes': 17, 'source': 'test', 'trained': True, 'margin_std': 1.0},
        images={'source': 'test', 'count': 1, 'views': 256}, created_at='now',
        settings={'quick': False, 'timing': {**QUICK_TIMING.__dict__, 'timed_region': 'run', 'interval': 'ci'}},
        skipped=[])
    return report


def test_speedup_text_and_noise_section_in_markdown():
    base, fast = synthetic_rounds()
    report = synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', fast)])
    markdown = render_markdown_stub(report)
    row = next(line for line in markdown.splitlines() if line.startswith('| openvino | int8 |'))
    low, high = report['results'][1]['speedup_ci95']
    assert f'{report["results"][1]["speedup_vs_torch_fp32"]:.1f}× ({low:.1f}–{high:.1f})' in row
    assert '## How noisy the machine was' in markdown and '**Too noisy to trust these figures:**' in markdown
    assert 'rounds 4, 5, 6, 7' in markdown


def test_compare_names_a_change_only_outside_the_noise(tmp_path):
    base, fast = synthetic_rounds(slow=())
    old = synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', fast), ('onnxruntime', 'fp32', base)])
    slower = synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', (np.array(fast) * 1.5).tolist()),
                               ('openvino', 'fp32', base)])
    rows = {(c['backend'], c['precision']): c for c in compare_reports(read_back(old), read_back(slower),
                                                                       'old.json')['rows']}
    assert rows[('torch', 'fp32')]['latency_change'] == 'within noise'
    assert rows[('openvino', 'int8')]['latency_change'] == 'slower'
    assert rows[('openvino', 'int8')]['speedup_change'] == 'lower'
    assert rows[('openvino', 'int8')]['speedup'] == pytest.approx(old['results'][1]['median_ms'] /
                                                                  slower['results'][1]['median_ms'])
    assert rows[('openvino', 'fp32')]['latency_change'] == rows[('onnxruntime', 'fp32')]['latency_change'] \
        == 'only in one report'
    # an older report (one window per row, no interval) is put beside, never judged
    v2 = {'schema_version': 2, 'results': [{'backend': 'openvino', 'precision': 'int8', 'device': 'cpu',
                                            'batch_size': 1, 'latency_ms': {'p50': 4.0}, 'parity': {},
                                            'throughput_ips': 250.0}]}
    rows = {(c['backend'], c['precision']): c for c in compare_reports(decode(v2), read_back(slower),
                                                                       'v2.json')['rows']}
    assert rows[('openvino', 'int8')]['latency_change'] == 'no interval'
    assert rows[('openvino', 'int8')]['old_ms'] == 4.0


@pytest.mark.parametrize('field, value', [('median_ms', math.nan), ('median_ci95_ms', [3.0]),
                                          ('median_ci95_ms', [5.0, 3.0]), ('speedup_ci95', 'wide')])
def test_compare_refuses_a_report_with_broken_figures(tmp_path, field, value):
    report = synthetic_report([('torch', 'fp32', [20.0] * 6)])
    report['results'][0][field] = value
    path = tmp_path / 'report.json'
    path.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=rf'{re.escape(str(path))} is not a benchmark report \(results\[0\]\.{field} is not'):
        read_report(path)


def test_a_report_reads_back_as_typed_results():
    """report.json's one encoder and one decoder: a report reads back as typed rows, the same after a second trip
    through its text; a row's latency is the median over rounds with its interval, or an older report's p50."""
    base, fast = synthetic_rounds(slow=())
    report = read_back(synthetic_report([('torch', 'fp32', base), ('openvino', 'int8', fast)]))
    row = report.results[1]
    assert row.key == ('openvino', 'int8', 'cpu', 1) and row.parity.passed is True
    assert row.latency() == (row.median_ms, row.median_ci95_ms) and row.median_ci95_ms[0] <= row.median_ms
    assert report.summary.fastest_passing[0].backend == 'openvino'
    assert decode(json.loads(encode(report))) == report
    old = decode({'schema_version': 1, 'results': [{'backend': 'torch', 'precision': 'fp32', 'batch_size': 1,
                                                    'latency_ms': {'p50': 2}}]})
    assert old.results[0].latency() == (2.0, None) and old.results[0].device == 'cpu'
    for bad, message in (({'schema_version': 4, 'results': []}, 'no schema_version'),
                         ({'schema_version': 3}, 'the report has no results'),
                         ({'schema_version': 3, 'results': [{'backend': 'torch'}]}, 'results[0] has no precision'),
                         ({'schema_version': 3, 'results': [], 'environment': {'cpu': []}},
                          'environment.cpu is not an object')):
        with pytest.raises(ValueError, match=re.escape(message)):
            decode(bad)


def test_timing_options():
    assert timing_config(rounds=6, seconds_per_row=0.5, seed=4) == TimingConfig(rounds=6, seconds_per_row=0.5,
                                                                                  seed=4)
    assert timing_config(quick=True) == QUICK_TIMING and timing_config(run_to_run=0).run_to_run == 0
    for bad in ({'rounds': 0}, {'rounds': 5}, {'seconds_per_row': -1}, {'seconds_per_row': 1e9},
                {'run_to_run': -0.1}, {'run_to_run': 1.0}):
        with pytest.raises(UsageError):
            timing_config(**bad)


def test_agreement_of_repeated_runs(tmp_path, capsys):
    """Three runs within 15 % whose intervals hold each other's medians meet the target; a run that swings does
    not, and the command says so with exit 1."""
    from benchmarks.agreement import agreement, main
    base, fast = synthetic_rounds(slow=())
    runs = [synthetic_report([('torch', 'fp32', (np.array(base) * scale).tolist()), ('openvino', 'int8', fast)])
            for scale in (1.0, 1.004, 0.996)]
    result = agreement([read_back(r) for r in runs])
    assert result['passed'] and result['within_tolerance'] and result['intervals_contain_others']
    assert result['median'] == pytest.approx(runs[0]['summary']['fastest_passing'][0]['speedup_vs_torch_fp32'])
    swing = synthetic_report([('torch', 'fp32', (np.array(base) * 1.3).tolist()), ('openvino', 'int8', fast)])
    result = agreement([read_back(r) for r in runs[:2] + [swing]])
    assert not result['passed'] and not result['intervals_contain_others']
    paths = []
    for i, report in enumerate(runs[:2] + [swing]):
        paths.append(tmp_path / f'{i}.json')
        paths[-1].write_text(json.dumps(report))
    assert main([str(p) for p in paths]) == 1
    out = capsys.readouterr().out
    assert 'target NOT met' in out and 'NOT every run' in out
    assert main([str(p) for p in paths[:2]]) == 0 and 'target met' in capsys.readouterr().out
    with pytest.raises(UsageError):
        main([str(paths[0])])
    with pytest.raises(ValueError, match='no passing row at batch 32'):
        main([str(p) for p in paths[:2]] + ['--batch-size', '32'])
