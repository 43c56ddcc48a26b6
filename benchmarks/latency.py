"""Latency the way trtexec and benchmark_app measure it.

Inputs are prepared once (``runner.prepare``); warm-up runs until both a minimum count and a minimum time have
passed; then timed iterations run until both a minimum count and a minimum time have passed. Only
``runner.run(prepared)`` is inside the timed region, one ``perf_counter_ns`` pair around each call; the
garbage collector is paused meanwhile so that its pauses do not land in a backend's figures.
"""
import gc
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import numpy as np

from export.runner import Runner

PERCENTILES = (50, 90, 95, 99)
TIMED_REGION = ('one synchronous runner.run() on inputs already prepared where the backend computes '
                '(device memory, bound OrtValues, an OpenVINO tensor sharing the batch); '
                'no preprocessing, host-device copies or output fetches')


@dataclass(frozen=True)
class TimingConfig:
    warmup_iters: int = 3
    warmup_s: float = 0.5
    min_iters: int = 10
    min_time_s: float = 2.0


DEFAULT_TIMING = TimingConfig()
QUICK_TIMING = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=5, min_time_s=0.2)


def time_runner(runner: Runner, prepared: Any, timing: TimingConfig = DEFAULT_TIMING) -> List[float]:
    """Per-iteration latencies in ms of ``runner.run(prepared)``, after warm-up."""
    _loop(runner, prepared, timing.warmup_iters, timing.warmup_s)
    return _loop(runner, prepared, timing.min_iters, timing.min_time_s)


def _loop(runner: Runner, prepared: Any, min_iters: int, min_time_s: float) -> List[float]:
    run, clock = runner.run, time.perf_counter_ns
    min_time_ns = int(min_time_s * 1e9)
    times, total = [], 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(times) < min_iters or total < min_time_ns:
            start = clock()
            run(prepared)
            elapsed = clock() - start
            times.append(elapsed)
            total += elapsed
    finally:
        if gc_was_enabled:
            gc.enable()
    return [t / 1e6 for t in times]


def summarize(times_ms: List[float], batch_size: int) -> Dict[str, Any]:
    """mean, std, min, p50/p90/p95/p99, max (ms); throughput in images/s over the summed run time."""
    t = np.asarray(times_ms, dtype=np.float64)
    latency = {'mean': float(t.mean()), 'std': float(t.std()), 'min': float(t.min())}
    latency.update({f'p{p}': float(np.percentile(t, p)) for p in PERCENTILES})
    latency['max'] = float(t.max())
    return {'latency_ms': latency, 'throughput_ips': float(batch_size * len(t) / (t.sum() / 1e3)),
            'iterations': int(len(t))}


def timing_dict(timing: TimingConfig) -> Dict[str, Any]:
    return {**asdict(timing), 'timed_region': TIMED_REGION}
