"""Latency timed in interleaved rounds, so that a row and its baseline are measured close together in time.

Every row (a runner at one batch size, its inputs already prepared) is warmed up once (a minimum count and a
minimum time, as trtexec and benchmark_app do). Then each round visits every row once, in an order shuffled by
a seeded generator and recorded: a window of one untimed run (what the previous row left in caches and thread
pools is not charged to this one) and timed runs until both a minimum count and a minimum time have passed. On a
shared machine other tenants' load comes and goes within seconds; spread over rounds it reaches every row alike,
and the per-round medians show it. Only ``runner.run(prepared)`` is inside the timed region, one
``perf_counter_ns`` pair around each call; the garbage collector is paused meanwhile (``export.timing``'s loop).
"""
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from export.runner import Runner
from export.timing import time_calls

from benchmarks.measure.uncertainty import CI_METHOD, RUN_TO_RUN, cpu_times, median_ci, steal_fraction, widen

PERCENTILES = (50, 90, 95, 99)
TIMED_REGION = ('one synchronous runner.run() on inputs already prepared where the backend computes '
                '(device memory, bound OrtValues, an OpenVINO tensor sharing the batch); '
                'no preprocessing, host-device copies or output fetches')


@dataclass(frozen=True)
class TimingConfig:
    rounds: int = 15               # each visits every row once
    seconds_per_row: float = 0.25  # timed window per row and round (at least min_iters runs)
    min_iters: int = 3
    window_warmup_iters: int = 1   # untimed runs at the start of every window
    warmup_iters: int = 3          # once per row, before the first round
    warmup_s: float = 0.5
    seed: int = 0                  # the rounds' shuffled order
    run_to_run: float = RUN_TO_RUN  # relative SD between runs that rounds cannot see (uncertainty.py)


DEFAULT_TIMING = TimingConfig()
QUICK_TIMING = TimingConfig(rounds=7, seconds_per_row=0.08, min_iters=3, warmup_iters=1, warmup_s=0.0)


class Window(NamedTuple):
    """A row to time: its name, the runner and the inputs it prepared."""
    label: str
    runner: Runner
    prepared: Any


class Rounds(NamedTuple):
    labels: List[str]
    times_ms: List[List[List[float]]]  # row -> round -> timed runs (ms)
    order: List[List[int]]             # round -> row indices in the order visited
    steal: List[Optional[float]]       # round -> steal fraction (None where /proc/stat is not exposed)
    steal_total: Optional[float]


def time_runner(runner: Runner, prepared: Any, warmup_iters: int = 3, warmup_s: float = 0.5, min_iters: int = 10,
                min_time_s: float = 2.0) -> List[float]:
    """One window of per-run latencies in ms after a warm-up: ``runner.run(prepared)`` alone is timed."""
    return time_calls(partial(runner.run, prepared), min_iters, min_time_s, warmup_iters, warmup_s)


def time_rounds(windows: Sequence[Window], timing: TimingConfig = DEFAULT_TIMING,
                on_round: Optional[Callable[[int], None]] = None) -> Rounds:
    """Warm every row up, then ``timing.rounds`` rounds over all rows in seeded shuffled orders."""
    for w in windows:
        time_runner(w.runner, w.prepared, timing.warmup_iters, timing.warmup_s, min_iters=0, min_time_s=0.0)
    rng = np.random.default_rng(timing.seed)
    times: List[List[List[float]]] = [[] for _ in windows]
    order, steal = [], []
    start = counters = cpu_times()
    for r in range(timing.rounds):
        visit = [int(i) for i in rng.permutation(len(windows))]
        for i in visit:
            w = windows[i]
            times[i].append(time_runner(w.runner, w.prepared, timing.window_warmup_iters, 0.0, timing.min_iters,
                                        timing.seconds_per_row))
        order.append(visit)
        now = cpu_times()
        steal.append(steal_fraction(counters, now))
        counters = now
        if on_round:
            on_round(r)
    return Rounds([w.label for w in windows], times, order, steal, steal_fraction(start, counters))


def summarize(times_ms: List[float], batch_size: int) -> Dict[str, Any]:
    """mean, std, min, p50/p90/p95/p99, max (ms) of every timed run; throughput in images/s over their summed
    time."""
    t = np.asarray(times_ms, dtype=np.float64)
    latency = {'mean': float(t.mean()), 'std': float(t.std()), 'min': float(t.min())}
    latency.update({f'p{p}': float(np.percentile(t, p)) for p in PERCENTILES})
    latency['max'] = float(t.max())
    return {'latency_ms': latency, 'throughput_ips': float(batch_size * len(t) / (t.sum() / 1e3)),
            'iterations': int(len(t))}


def round_figures(times_ms: List[List[float]], batch_size: int, run_to_run: float = 0.0) -> Dict[str, Any]:
    """A row's figures from its rounds: ``median_ms`` (the median over rounds of each round's median), its 95 %
    interval (with the run-to-run term; the rounds' own as ``median_ci95_rounds_ms``) and coefficient of
    variation across rounds, the per-round medians (for ratios paired by round), and ``summarize`` over every
    timed run (tail percentiles, throughput)."""
    medians = [float(np.median(t)) for t in times_ms]
    figures = widen(median_ci(medians), run_to_run)
    return {'median_ms': figures['median'], 'median_ci95_ms': figures['ci95'],
            'median_ci95_rounds_ms': figures['ci95_rounds'], 'cv': figures['cv'], 'round_medians_ms': medians,
            **summarize([t for window in times_ms for t in window], batch_size)}


def timing_dict(timing: TimingConfig) -> Dict[str, Any]:
    return {**asdict(timing), 'timed_region': TIMED_REGION, 'interval': CI_METHOD}
