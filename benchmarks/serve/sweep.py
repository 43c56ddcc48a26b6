"""A search over Triton's settings in the spirit of Model Analyzer, for ``benchmarks.serve.benchmark --sweep-max-batch ...``.

Model Analyzer needs a server that can load our backends, which only NVIDIA's container has; so the sweep serves
our runner through PyTriton instead, one model per configuration (max batch, preferred batch = the max, queue
delay, instance count: one runner per instance) bound in the same server, and measures each in turn with
``perf_analyzer`` at one concurrency over gRPC (where perf_analyzer cannot run here, with our own closed loop,
``benchmarks.serve.load``: the same rows without the server's queue time). The best configuration is the one with
the highest throughput whose p99 latency is within the budget; it is written into the repository's
``config.pbtxt`` files of that backend and precision (``export.triton.repository.update_batching``). A budget no
configuration meets is said, and the repository keeps its configuration.
"""
import itertools
from typing import Callable, List, Optional, Sequence, Tuple

from export.triton.repository import Batching

import benchmarks.serve.perf_analyzer as perf_analyzer
from benchmarks.serve.load import closed_loop


def grid(max_batches: Sequence[int], delays_us: Sequence[int], instances: Sequence[int]) -> List[Batching]:
    """Every combination; the preferred batch is the max (Triton waits up to the delay to fill it)."""
    return [Batching(b, (b,), d, i) for b, d, i in itertools.product(max_batches, delays_us, instances)]


def variant_name(name: str, batching: Batching) -> str:
    return f'{name}__b{batching.max_batch}_d{batching.max_queue_delay_us}_i{batching.instances}'


def measure(name: str, configs: Sequence[Batching], concurrency: int, figures_of: Callable[[str], dict], how: str,
            progress=lambda message: None) -> List[dict]:
    """Each configuration's model (bound by the caller as ``variant_name``) measured by ``figures_of``, a row per
    configuration: its settings and the figures (or their error)."""
    rows = []
    for config in configs:
        progress(f'sweep: {variant_name(name, config)} at concurrency {concurrency}, {how} ...')
        rows.append({'max_batch': config.max_batch, 'preferred': list(config.preferred),
                     'max_queue_delay_us': config.max_queue_delay_us, 'instances': config.instances,
                     **figures_of(variant_name(name, config))})
    return rows


def by_perf_analyzer(url: str, concurrency: int, chw: Sequence[int], window_ms: int,
                     access_token: Optional[str]) -> Callable[[str], dict]:
    """A model's figures from perf_analyzer over gRPC (throughput, latency, the server's times)."""
    return lambda model: perf_analyzer.measure(model, url, 'grpc', concurrency, chw, window_ms, access_token)


def by_closed_loop(url: str, concurrency: int, images, seconds: float, timeout: float) -> Callable[[str], dict]:
    """A model's figures from our closed loop (where perf_analyzer cannot run): the same figures, with no server-side
    times; a level with errors is an error, never a figure."""
    def figures_of(model: str) -> dict:
        level = closed_loop(url, model, images, concurrency, seconds, timeout, [])
        if level['complete'] and not level['errors'] and level['latency_ms']:
            return {'throughput_ips': level['throughput_ips'], 'latency_ms': level['latency_ms'], 'server_ms': {}}
        return {'error': f'closed loop: {level["errors"]} of {level["requests"]} requests failed'
                         + (f' ({level["first_errors"][0]})' if level['first_errors'] else '')}
    return figures_of


def choose(rows: Sequence[dict], p99_budget_ms: float) -> Tuple[Optional[dict], str]:
    """The row with the highest throughput whose p99 is within the budget, and a sentence saying what was chosen
    (or that nothing met the budget)."""
    measured = [r for r in rows if 'error' not in r]
    within = [r for r in measured if r['latency_ms']['p99'] <= p99_budget_ms]
    if not within:
        best = min(measured, key=lambda r: r['latency_ms']['p99'], default=None)
        lowest = f'; the lowest p99 was {best["latency_ms"]["p99"]:.1f} ms' if best else ''
        return None, (f'no configuration met the p99 budget of {p99_budget_ms:g} ms{lowest}: the repository keeps '
                      f'its configuration')
    best = max(within, key=lambda r: r['throughput_ips'])
    return best, (f'max batch {best["max_batch"]}, queue delay {best["max_queue_delay_us"]} µs, '
                  f'{best["instances"]} instance(s): {best["throughput_ips"]:.1f} images/s at p99 '
                  f'{best["latency_ms"]["p99"]:.1f} ms (budget {p99_budget_ms:g} ms)')


def batching_of(row: dict) -> Batching:
    return Batching(row['max_batch'], tuple(row['preferred']), row['max_queue_delay_us'], row['instances'])
