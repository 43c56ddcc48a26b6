"""``python -m benchmarks.serve``: one of our runners behind a real Triton Inference Server, checked and load-tested.

    python -m benchmarks.serve --checkpoint RUN --output-dir DIR [--backend openvino] [--precision int8]
        [--concurrency 1,4,16] [--seconds 10] [--max-batch 32] [--preferred-batch 8,16,32]
        [--max-queue-delay-us 500] [--onnx-dir OUT] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
        [--sweep-max-batch 8,32 [--sweep-queue-delay-us 0,500,2000] [--sweep-instances 1,2] [--p99-budget-ms 100]
         [--repository REPO]]

PyTriton starts Triton's own server binary on localhost and binds the runner behind Triton's dynamic batcher
(``benchmarks.serve.server``). The sample photographs are classified over HTTP and gRPC with ``tritonclient`` and
each top-1 compared with the runner's own answer; a request of the wrong shape and one of the wrong type must get
Triton's error while the server goes on serving. Then, at each concurrency, a closed loop: that many clients, each
sending one image and waiting for its answer, for ``--seconds``, every request with a timeout
(``benchmarks.serve.load``); then Triton's own ``perf_analyzer`` at the same concurrency over HTTP and gRPC
(``benchmarks.serve.perf_analyzer``: its stable windows, p50-p99, and the server's queue and compute times), and how
far the two agree. Throughput, latency, the batch sizes Triton formed and the errors go to ``serve.json``,
``serve.md`` and ``serve.png`` (``benchmarks.serve.report``); without perf_analyzer the report says why. With
``--sweep-max-batch``, a search over Triton's settings (``benchmarks.serve.sweep``): one more model per
configuration in the same server, each measured by perf_analyzer (where it cannot run here, by the closed loop), the
best within ``--p99-budget-ms`` written into ``--repository``'s config. A server that stops answering ends the
run with one line and a ``serve.json`` marked incomplete.
"""
import contextlib
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from alexnet_zoo.checkpoint import load_model
from alexnet_zoo.cli import (MAX_BATCH, ArgumentParser, UsageError, add_model_arguments, bounded, first_line,
                             parse_sizes, positive, run_cli)
from alexnet_zoo.data import sample_batch
from alexnet_zoo.files import PathLike, ensure_writable_dir
from alexnet_zoo.manifest import read_manifest
from export.triton.repository import KIND as TRITON_KIND, Batching, add_batching_arguments, batching_from, update_batching

from benchmarks.backends.artifacts import artifact_for, export_graphs, graphs_in
from benchmarks.measure.environment import cpu_model, cpu_threads
from benchmarks.backends.registry import BACKENDS, PRECISIONS, REGISTRY, Spec, parse_list
from benchmarks.serve.load import bad_requests, classify, closed_loop
import benchmarks.serve.perf_analyzer as perf_analyzer
import benchmarks.serve.sweep as serve_sweep
from benchmarks.serve.report import SCHEMA, agreement, ours_over, render_markdown, served_as_expected, write_serve_report
from benchmarks.serve.server import check_ports, log_tail, triton_server


class ServerGone(RuntimeError):
    """The server stopped answering during the load."""


def serve_benchmark(loaded, output_dir: PathLike, backend: str = 'openvino', precision: str = 'int8',
                    concurrency: Sequence[int] = (1, 4, 16), seconds: float = 10.0, batching: Batching = Batching(),
                    onnx_dir: Optional[PathLike] = None, ports: Optional[Dict[str, int]] = None,
                    timeout: float = 10.0, progress=print, sweep: Sequence[Batching] = (),
                    p99_budget_ms: float = 100.0, repository: Optional[PathLike] = None) -> dict:
    """Serve ``loaded`` with one runner through Triton, check it, load it; with ``sweep``, measure each of those
    configurations too and write the best within ``p99_budget_ms`` into ``repository``; returns what serve.json
    holds."""
    ports = ports or {'--http-port': 8000, '--grpc-port': 8001, '--metrics-port': 8002}
    spec = _runnable(backend, precision)
    check_ports(ports)
    output_dir = ensure_writable_dir(output_dir)
    names, x = sample_batch(loaded.model)
    x = x.numpy()
    name = f'{loaded.name}_{backend}_{precision}'
    report = _new_report(loaded, name, spec, batching)
    if report['perf_analyzer']['skipped']:
        progress(f'perf_analyzer: not run ({report["perf_analyzer"]["skipped"]})')
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-serve-') as workdir, contextlib.ExitStack() as stack:
        workdir = Path(workdir)
        artifact = _artifact(spec, loaded, onnx_dir, workdir, batching.max_batch)
        runner = stack.enter_context(spec.runner(artifact, precision, spec.device, cpu_threads()))
        variants = [(serve_sweep.variant_name(name, config),
                     [stack.enter_context(spec.runner(artifact, precision, spec.device, cpu_threads()))
                      for _ in range(config.instances)], config) for config in sweep]
        local = [int(np.argmax(runner.infer(x[i:i + 1])[0])) for i in range(len(x))]
        formed = _start_triton(stack, report, runner, variants, x, loaded.num_classes, batching, ports, workdir,
                               progress)
        urls = {'http': f'127.0.0.1:{ports["--http-port"]}', 'grpc': f'127.0.0.1:{ports["--grpc-port"]}'}
        try:
            report['check'] = {protocol: agreement(names, local, classify(url, protocol, name, x, timeout))
                               for protocol, url in urls.items()}
            report['bad_requests'] = bad_requests(urls['grpc'], name, x[0], timeout)
            for clients in concurrency:
                _load_level(report, urls, x, clients, seconds, timeout, formed, output_dir, progress)
            if sweep:
                report['sweep'] = settings_sweep(name, sweep, urls['grpc'], max(concurrency), x, seconds, timeout,
                                                 formed, p99_budget_ms, repository, backend, precision, progress,
                                                 report['perf_analyzer']['skipped'])
            report['complete'] = True
        except ServerGone:
            raise
        except Exception as e:  # tritonclient's and PyTriton's errors are their own types: one line, partial report
            raise ServerGone(f'the server failed: {first_line(e, 300)}; partial results in '
                             f'{output_dir / "serve.json"}, marked incomplete') from None
        finally:
            report['elapsed_note'] = 'latency: end to end at the client, request sent to answer decoded'
            if not report['complete']:
                report['server_log'] = log_tail([workdir / 'pytriton.log', workdir / 'triton.log'])
            write_serve_report(report, output_dir)
    return report


def _runnable(backend: str, precision: str) -> Spec:
    """The row to serve, on the device its runner uses here; refused with the reason before anything starts, since a
    server that cannot run it would only fail later and less clearly."""
    import torch
    device = REGISTRY[backend].devices(precision, torch.cuda.is_available())[0]  # TensorRT: cuda; most: cpu
    spec = Spec(backend, precision, device)
    reason = spec.unavailable()
    if reason:
        raise ValueError(f'{backend} {precision} cannot run here: {reason}')
    return spec


def _new_report(loaded, name: str, spec: Spec, batching: Batching) -> dict:
    """serve.json as it stands before the server starts: marked incomplete, so that a run cut short says so."""
    return {'schema_version': SCHEMA, 'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'model': {'name': loaded.name, 'classes': loaded.num_classes, 'weights': loaded.source},
            'served': {'name': name, 'backend': spec.backend, 'precision': spec.precision, 'device': spec.device,
                       'max_batch_size': batching.max_batch, 'preferred_batch_size': list(batching.preferred),
                       'max_queue_delay_us': batching.max_queue_delay_us, 'instances': batching.instances,
                       'server': 'Triton Inference Server through PyTriton, on 127.0.0.1'},
            'machine': {'cpu': cpu_model(), 'threads': cpu_threads()}, 'levels': [], 'complete': False,
            'perf_analyzer': {'skipped': perf_analyzer.unavailable()}}


def _artifact(spec: Spec, loaded, onnx_dir: Optional[PathLike], workdir: Path, max_batch: int):
    """What the runner loads: the graph export.onnx wrote into ``onnx_dir`` where it is there, else exported now, so
    that a served graph has always passed its parity gate."""
    graphs = graphs_in(onnx_dir, loaded, [spec.graph]) if onnx_dir and spec.graph else {}
    if spec.graph and spec.graph not in graphs:
        exported, failed = export_graphs(loaded, Path(onnx_dir) if onnx_dir else workdir, [spec.graph])
        if spec.graph in failed:
            raise ValueError(f'the {spec.graph} graph failed its parity gate at export: {failed[spec.graph]}')
        graphs.update(exported)
    return artifact_for(spec, loaded.model, graphs, workdir, [max_batch])


def _start_triton(stack: contextlib.ExitStack, report: dict, runner, variants, x: np.ndarray, num_classes: int,
                  batching: Batching, ports: Dict[str, int], workdir: Path, progress):
    """Triton serving ``runner`` (and the sweep's ``variants``) until ``stack`` closes, its start time in ``report``;
    a start that fails is one line, since PyTriton raises its own error types."""
    name = report['served']['name']
    progress(f'starting Triton with {name} (dynamic batching up to {batching.max_batch}) ...')
    started = time.perf_counter()
    try:
        formed = stack.enter_context(triton_server(runner, name, x.shape[1:], num_classes, batching,
                                                   ports, workdir / 'triton.log', variants))
    except Exception as e:  # PyTriton's own error types (a server that would not start, a refused binding)
        raise RuntimeError(f'Triton did not start: {first_line(e, 300)}') from None
    report['served']['start_seconds'] = round(time.perf_counter() - started, 2)
    return formed


def _load_level(report: dict, urls: Dict[str, str], x: np.ndarray, clients: int, seconds: float, timeout: float,
                formed, output_dir: Path, progress) -> None:
    """One concurrency: our closed loop, then perf_analyzer on the same load. The level joins ``report`` first, so
    that a failure after it leaves what was measured in the partial serve.json."""
    name = report['served']['name']
    progress(f'load: {clients} client(s) for {seconds} s ...')
    level = closed_loop(urls['grpc'], name, x, clients, seconds, timeout, formed)
    report['levels'].append(level)
    if level['complete'] and not report['perf_analyzer']['skipped']:
        progress(f'perf_analyzer: concurrency {clients}, HTTP and gRPC ...')
        level['perf_analyzer'] = {protocol: perf_analyzer.measure(
            name, url, protocol, clients, x.shape[1:], pa_window_ms(seconds), getattr(formed, 'access_token', None))
            for protocol, url in urls.items()}
        level['ours_over_perf_analyzer'] = ours_over(level)
    if not level['complete']:
        raise ServerGone(f'the server stopped answering at concurrency {clients} '
                         f'({level["first_errors"][0] if level["first_errors"] else "no answer"}); '
                         f'partial results in {output_dir / "serve.json"}, marked incomplete')


def pa_window_ms(seconds: float) -> int:
    """perf_analyzer's measurement window: a third of the seconds given to each level (it needs three stable ones),
    at least 200 ms."""
    return max(200, int(seconds * 1000 / 3))


def settings_sweep(name, configs, url, clients, images, seconds, timeout, formed, p99_budget_ms, repository, backend,
                   precision, progress, reason: Optional[str]) -> dict:
    """The sweep's rows (each configuration's model measured by perf_analyzer; where ``reason`` says why it cannot
    run here, by our closed loop), the one chosen, and where it was written."""
    if reason:
        progress(f'sweep: measured by our closed loop ({reason})')
        figures_of = serve_sweep.by_closed_loop(url, clients, images, seconds, timeout)
    else:
        figures_of = serve_sweep.by_perf_analyzer(url, clients, images.shape[1:], pa_window_ms(seconds),
                                                  getattr(formed, 'access_token', None))
    how = 'closed loop' if reason else 'perf_analyzer'
    rows = serve_sweep.measure(name, configs, clients, figures_of, how, progress)
    chosen, verdict = serve_sweep.choose(rows, p99_budget_ms)
    written = update_batching(repository, backend, precision, serve_sweep.batching_of(chosen)) \
        if chosen and repository else []
    return {'concurrency': clients, 'p99_budget_ms': p99_budget_ms, 'measured_by': how, 'rows': rows,
            'chosen': chosen, 'verdict': verdict, 'repository': str(repository) if repository else None, 'written': written}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m benchmarks.serve', description=__doc__.split('\n')[0].split('``: ')[1])
    add_model_arguments(parser)
    parser.add_argument('--backend', default='openvino', choices=[b for b in BACKENDS if b != 'torch-compile'],
                        help='the runner Triton serves (default: openvino)')
    parser.add_argument('--precision', default='int8', help='fp32, fp16, bf16 or int8 (default: int8)')
    parser.add_argument('--concurrency', default='1,4,16', help='comma list of concurrent clients (default 1,4,16)')
    parser.add_argument('--seconds', type=positive(float, 3600), default=10.0, help='load per concurrency (default 10)')
    add_batching_arguments(parser)
    parser.add_argument('--timeout', type=positive(float, 600), default=10.0, help='seconds a request may take')
    parser.add_argument('--onnx-dir', help='graphs export.onnx wrote (default: exported into a temporary folder)')
    parser.add_argument('--http-port', type=bounded(int, 1, 65535), default=8000)
    parser.add_argument('--grpc-port', type=bounded(int, 1, 65535), default=8001)
    parser.add_argument('--metrics-port', type=bounded(int, 1, 65535), default=8002)
    parser.add_argument('--output-dir', required=True, help='where serve.json, serve.md and serve.png go')
    parser.add_argument('--sweep-max-batch', help='sweep Triton\'s settings with perf_analyzer: these max batch sizes '
                                                  '(comma list; each also the preferred batch)')
    parser.add_argument('--sweep-queue-delay-us', default='0,500,2000', help='the queue delays the sweep tries')
    parser.add_argument('--sweep-instances', default='1,2', help='the instance counts the sweep tries')
    parser.add_argument('--p99-budget-ms', type=positive(float, 600_000), default=100.0,
                        help='the sweep chooses the highest throughput whose p99 is within this (default 100 ms)')
    parser.add_argument('--repository', help='a repository export.triton.repository wrote: the sweep\'s choice goes into its '
                                             'config.pbtxt for this backend and precision')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    precision = parse_list(args.precision, PRECISIONS, 'precision')[0]
    if not args.checkpoint and not args.pretrained:
        raise UsageError('give --checkpoint RUN (or --pretrained): served answers are checked against trained weights')
    concurrency = parse_sizes(args.concurrency, '--concurrency', 1024)
    batching = batching_from(args)  # a usage error before the model loads
    ports = {'--http-port': args.http_port, '--grpc-port': args.grpc_port, '--metrics-port': args.metrics_port}
    if len(set(ports.values())) < 3:
        raise UsageError('--http-port, --grpc-port and --metrics-port must differ')
    sweep = serve_sweep.grid(parse_sizes(args.sweep_max_batch, '--sweep-max-batch', MAX_BATCH),
                             parse_sizes(args.sweep_queue_delay_us, '--sweep-queue-delay-us', 10_000_000, low=0),
                             parse_sizes(args.sweep_instances, '--sweep-instances', 64)) if args.sweep_max_batch else []
    if args.repository and not sweep:
        raise UsageError('--repository is for the sweep (--sweep-max-batch)')
    if args.repository:
        manifest = read_manifest(args.repository) if Path(args.repository).is_dir() else None
        if not manifest or manifest.get('kind') != TRITON_KIND:
            raise UsageError(f'--repository {args.repository} is not a repository written by export.triton.repository')
    check_ports(ports)
    loaded = load_model(args.model, args.checkpoint, args.num_classes, args.pretrained)
    report = serve_benchmark(loaded, args.output_dir, args.backend, precision, concurrency, args.seconds,
                             batching, args.onnx_dir, ports, args.timeout,
                             lambda message: print(message, file=sys.stderr, flush=True), sweep, args.p99_budget_ms,
                             args.repository)
    print(render_markdown(report))
    print(f'wrote {args.output_dir}/serve.json, serve.md, serve.png')
    if not served_as_expected(report):
        raise RuntimeError(f'served answers differ from the runner\'s, or a bad request was accepted: see '
                           f'{args.output_dir}/serve.md')
    return 0


if __name__ == '__main__':
    run_cli(main)
