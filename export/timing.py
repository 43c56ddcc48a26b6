"""The one timing loop: wall-clock times of repeated calls, after a warm-up, for as many runs and seconds as asked.

The benchmark's latency rounds, its cross-check against benchmark_app, the machine's limits and export.onnx's
quick batch-1 figure all time with it, so that they mean the same thing by a run. Only the call itself is inside
the timed region (one ``perf_counter_ns`` pair around it); the garbage collector is paused meanwhile. Imports
nothing heavy.
"""
import gc
import time
from typing import Any, Callable, List, Optional


def time_calls(call: Callable[[], Any], min_iters: int = 1, min_time_s: float = 0.0, warmup_iters: int = 0,
               warmup_s: float = 0.0, each: Optional[Callable[[Any], None]] = None) -> List[float]:
    """The time (ms) of each timed ``call()``, after untimed warm-up calls until both ``warmup_iters`` and
    ``warmup_s`` have passed; timed calls go on until both ``min_iters`` and ``min_time_s`` have. ``each``
    receives every timed call's result, outside the timed region."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _calls(call, warmup_iters, warmup_s, None)
        return [t / 1e6 for t in _calls(call, min_iters, min_time_s, each)]
    finally:
        if gc_was_enabled:
            gc.enable()


def _calls(call: Callable[[], Any], min_iters: int, min_time_s: float,
           each: Optional[Callable[[Any], None]]) -> List[int]:
    clock, min_time_ns = time.perf_counter_ns, int(min_time_s * 1e9)
    times: List[int] = []
    total = 0
    while len(times) < min_iters or total < min_time_ns:
        start = clock()
        result = call()
        elapsed = clock() - start
        times.append(elapsed)
        total += elapsed
        if each is not None:
            each(result)
    return times
