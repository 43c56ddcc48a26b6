"""Cross-check the harness's timing against OpenVINO's own ``benchmark_app`` on the same graph.

    python -m benchmarks.crosscheck --onnx OUT/model.int8.onnx [--batch-size 1] [--rounds 3] [--seconds 10]

Runs benchmark_app (latency hint, static shape, sync API, inference only) and the harness's OpenVINORunner in
alternating rounds, so that a busy machine slows both alike, and prints each round's medians and their ratio.
The harness's overhead is small when its median is within 10 % of benchmark_app's. benchmark_app reports
OpenVINO's own per-request latency; the harness a wall clock around the Python call; their difference per run
is printed too.
"""
import re
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from alexnet_zoo.cli import MAX_BATCH, ArgumentParser, positive, run_cli
from export.contract import read_metadata
from export.int8.uint8 import cpu_graph
from export.timing import time_calls

from benchmarks.measure.environment import cpu_threads
from benchmarks.measure.latency import summarize, time_runner
from benchmarks.backends.openvino_runner import OpenVINORunner


def benchmark_app_path() -> str:
    """benchmark_app from the openvino wheel: beside this Python first, then on PATH."""
    beside = Path(sys.executable).with_name('benchmark_app')
    found = str(beside) if beside.is_file() else shutil.which('benchmark_app')
    if not found:
        raise FileNotFoundError('benchmark_app not found (it ships in the openvino wheel)')
    return found


def graph_model(onnx_path: Path) -> Tuple[str, List[int]]:
    """The model name and input size (C, H, W) export.onnx wrote into the graph's metadata; a graph without them
    is refused, not fed another model's input."""
    meta = read_metadata(onnx_path)
    name, size = meta.get('model_name'), meta.get('input_size')
    if not isinstance(name, str) or not name:
        raise ValueError(f'{onnx_path} names no model_name in its metadata (export it with python -m export.onnx)')
    if not isinstance(size, list) or len(size) != 3 or not all(type(d) is int and d > 0 for d in size):
        raise ValueError(f'{onnx_path} has no (C, H, W) input_size in its metadata, got {size!r}')
    return name, size


def run_benchmark_app(onnx_path: Path, batch_size: int, seconds: float, input_size: Sequence[int]) -> float:
    """benchmark_app's median latency (ms) for ``onnx_path`` at ``batch_size`` and ``input_size`` (C, H, W)
    (latency hint: one stream, a thread per core, as the harness's runner)."""
    shape = ','.join(str(d) for d in [batch_size, *input_size])
    cmd = [benchmark_app_path(), '-m', str(onnx_path), '-d', 'CPU', '-shape', f'[{shape}]',
           '-hint', 'latency', '-api', 'sync', '-t', str(max(1, round(seconds)))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    match = re.search(r'Median:\s+([\d.]+) (ms|us)', proc.stdout)  # below a millisecond it says us
    if proc.returncode != 0 or not match:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ['no output']
        raise RuntimeError(f'benchmark_app failed: {tail[0]}')
    return float(match.group(1)) / (1000 if match.group(2) == 'us' else 1)


def run_harness(onnx_path: Path, batch_size: int, seconds: float, threads: int) -> Tuple[float, float]:
    """The harness's median latency (ms) for the graph, timed exactly as ``python -m benchmarks`` does; and the
    median of (wall-clock time of ``run`` - OpenVINO's own latency of that request), the harness's overhead,
    which a busy machine disturbs far less than either latency."""
    from alexnet_zoo.data import sample_batch
    from benchmarks.run.harness import tile
    with OpenVINORunner(onnx_path, 'int8', threads=threads) as runner:
        x = tile(sample_batch(graph_model(onnx_path)[0])[1].numpy(), batch_size)
        prepared = runner.prepare(x)
        times = time_runner(runner, prepared, warmup_iters=3, warmup_s=1.0, min_iters=10, min_time_s=seconds)
        latencies = []  # OpenVINO's own latency of each request, read after its run
        walls = time_calls(partial(runner.run, prepared), min_iters=100,
                           each=lambda request: latencies.append(request.latency))
    return summarize(times, batch_size)['latency_ms']['p50'], float(np.median(np.subtract(walls, latencies)))


def crosscheck(onnx_path: Path, batch_size: int = 1, rounds: int = 3, seconds: float = 10.0) -> List[Dict[str, float]]:
    threads = cpu_threads()
    input_size = graph_model(onnx_path)[1]  # the user's file names its model, or the error names the file
    out = []
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-crosscheck-') as tmp:
        # benchmark_app gets the graph the harness's runner runs: the int8 file on uint8 activations (cpu_graph)
        as_run = Path(tmp) / Path(onnx_path).name
        as_run.write_bytes(cpu_graph(onnx_path, 'int8'))
        for _ in range(rounds):
            app = run_benchmark_app(as_run, batch_size, seconds, input_size)
            ours, overhead = run_harness(onnx_path, batch_size, seconds, threads)
            out.append({'benchmark_app_ms': app, 'harness_ms': ours, 'ratio': ours / app, 'overhead_ms': overhead})
    return out


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m benchmarks.crosscheck', description=__doc__.splitlines()[0])
    parser.add_argument('--onnx', required=True, help='an exported graph, e.g. model.int8.onnx')
    parser.add_argument('--batch-size', type=positive(int, MAX_BATCH), default=1)
    parser.add_argument('--rounds', type=positive(int, 100), default=3)
    parser.add_argument('--seconds', type=positive(float, 600), default=10.0, help='timed seconds per tool and round')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.onnx).is_file():
        raise FileNotFoundError(f'ONNX file not found: {args.onnx}')
    rows = crosscheck(Path(args.onnx), args.batch_size, args.rounds, args.seconds)
    for i, r in enumerate(rows, 1):
        print(f'round {i}: benchmark_app {r["benchmark_app_ms"]:.2f} ms, harness {r["harness_ms"]:.2f} ms, '
              f'harness / benchmark_app {r["ratio"]:.3f}; harness overhead per run {r["overhead_ms"] * 1e3:.0f} us')
    app = float(np.median([r['benchmark_app_ms'] for r in rows]))
    ours = float(np.median([r['harness_ms'] for r in rows]))
    print(f'median of rounds: benchmark_app {app:.2f} ms, harness {ours:.2f} ms, ratio {ours / app:.3f} '
          f'({"within" if abs(ours / app - 1) <= 0.10 else "NOT within"} 10 %)')
    return 0


if __name__ == '__main__':
    run_cli(main)
