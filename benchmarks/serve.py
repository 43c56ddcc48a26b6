"""``python -m benchmarks.serve``: one of our runners behind a real Triton Inference Server, checked and load-tested.

    python -m benchmarks.serve --checkpoint RUN --output-dir DIR [--backend openvino] [--precision int8]
        [--concurrency 1,4,16] [--seconds 10] [--max-batch 32] [--preferred-batch 8,16,32]
        [--max-queue-delay-us 500] [--onnx-dir OUT] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]

PyTriton starts Triton's own server binary on localhost and binds the runner behind Triton's dynamic batcher.
The sample photographs are classified over HTTP and gRPC with ``tritonclient`` and each top-1 compared with the
runner's own answer; a request of the wrong shape and one of the wrong type must get Triton's error while the
server goes on serving. Then, at each concurrency, a closed loop: that many clients, each sending one image and
waiting for its answer, for ``--seconds``, every request with a timeout. Throughput, p50/p90/p99 end-to-end
latency, the batch sizes Triton formed and the errors go to ``serve.json``, ``serve.md`` and ``serve.png``. A
server that stops answering ends the run with one line and a ``serve.json`` marked incomplete.
"""
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from alexnet_zoo.checkpoint import load_model
from alexnet_zoo.cli import (ArgumentParser, UsageError, add_model_arguments, bounded, first_line,
                             parse_sizes, positive, run_cli)
from alexnet_zoo.data import sample_batch
from alexnet_zoo.files import PathLike, ensure_writable_dir
from alexnet_zoo.manifest import save_set
from export.contract import INPUT_NAME, OUTPUT_NAME
from export.triton import Batching, add_batching_arguments, batching_from

from .artifacts import artifact_for, export_graphs, graphs_in
from .environment import cpu_model, cpu_threads
from .plots import png, pyplot
from .registry import BACKENDS, PRECISIONS, REGISTRY, Spec, parse_list

SCHEMA = 1
FAILURES_IN_A_ROW = 3  # a client that meets this many failed requests in a row takes the server for gone


class ServerGone(RuntimeError):
    """The server stopped answering during the load."""


def check_ports(ports: Dict[str, int]) -> None:
    """One clear line for a port another process already listens on (before anything starts)."""
    for option, port in ports.items():
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                raise OSError(f'port {port} on 127.0.0.1 is in use: choose another with {option}') from None


def _own_libpython() -> None:
    """Triton's Python backend stub is linked to ``libpython3.X.so`` without a path to it: let it find this
    interpreter's (a pyenv or conda build differs from the system one it would otherwise load)."""
    import sysconfig
    libdir = sysconfig.get_config_var('LIBDIR')
    paths = [p for p in os.environ.get('LD_LIBRARY_PATH', '').split(':') if p]
    if libdir and libdir not in paths:
        os.environ['LD_LIBRARY_PATH'] = ':'.join([libdir, *paths])


def _quiet_resource_tracker() -> None:
    """A server killed under load leaves PyTriton's shared-memory blocks registered in this process; at exit
    Python's resource tracker frees them and warns about each, after our one error line. The tracker is a child
    interpreter started once: it takes its warning filters from ``PYTHONWARNINGS`` when it starts."""
    from multiprocessing import resource_tracker
    before = os.environ.get('PYTHONWARNINGS')
    quiet = 'ignore::UserWarning:multiprocessing.resource_tracker'
    os.environ['PYTHONWARNINGS'] = f'{before},{quiet}' if before else quiet
    try:
        resource_tracker.ensure_running()
    finally:
        if before is None:
            del os.environ['PYTHONWARNINGS']
        else:
            os.environ['PYTHONWARNINGS'] = before


@contextlib.contextmanager
def _pytriton_log(path: Path) -> Iterator[None]:
    """PyTriton's own log records (a tensor block it could not release, a traceback from its proxy thread when
    the server dies) go to ``path``, not to stderr, where the one error line is the user's answer."""
    log = logging.getLogger('pytriton')
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.propagate = propagate


def log_tail(paths: Sequence[Path], lines: int = 20) -> List[str]:
    """The last lines of the server's logs, kept in a partial report (the logs go with the run's temporary folder)."""
    tail: List[str] = []
    for path in paths:
        if path.is_file():
            tail += [f'{path.name}: {line}' for line in
                     path.read_text(errors='replace').splitlines()[-lines:] if line.strip()]
    return tail


@contextlib.contextmanager
def triton_server(runner, name: str, chw: Sequence[int], classes: int, batching: Batching, ports: Dict[str, int],
                  log_file: Path) -> Iterator[List[int]]:
    """Triton on localhost serving ``runner`` as ``name`` with dynamic batching; yields the list of batch sizes
    the runner was called with (appended as they are formed). The server is stopped on exit."""
    _own_libpython()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    formed: List[int] = []

    @batch
    def infer(**inputs):
        x = inputs[INPUT_NAME]
        formed.append(len(x))
        return {OUTPUT_NAME: np.asarray(runner.infer(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)}

    config = TritonConfig(http_address='127.0.0.1', http_port=ports['--http-port'], grpc_address='127.0.0.1',
                          grpc_port=ports['--grpc-port'], metrics_address='127.0.0.1',
                          metrics_port=ports['--metrics-port'], log_file=log_file, exit_timeout_secs=5)
    _quiet_resource_tracker()
    with _pytriton_log(log_file.with_name('pytriton.log')):
        triton = Triton(config=config)
        try:
            triton.bind(model_name=name, infer_func=infer, strict=True,
                        inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=tuple(chw))],
                        outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(classes,))],
                        config=ModelConfig(max_batch_size=batching.max_batch, batcher=DynamicBatcher(
                            max_queue_delay_microseconds=batching.max_queue_delay_us,
                            preferred_batch_size=list(batching.preferred))))
            triton.run()
            yield formed
        finally:
            triton.stop()


def classify(url: str, protocol: str, name: str, images: np.ndarray, timeout: float) -> List[int]:
    """Each image's top-1 class from the server, one request per image, over ``protocol`` (http or grpc)."""
    client_module = _client(protocol)
    client = _connect(client_module, url, timeout)
    answers = []
    try:
        for x in images:
            answers.append(int(np.argmax(_infer(client_module, client, name, x[None], timeout)[0])))
    finally:
        client.close()
    return answers


def _client(protocol: str):
    if protocol == 'http':
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    return module


def _connect(module, url: str, timeout: float):
    if module.__name__.endswith('http'):
        return module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    return module.InferenceServerClient(url)


def _infer(module, client, name: str, x: np.ndarray, timeout: float, dtype: str = 'FP32') -> np.ndarray:
    request = module.InferInput(INPUT_NAME, list(x.shape), dtype)
    request.set_data_from_numpy(x)
    if module.__name__.endswith('http'):
        answer = client.infer(name, [request], timeout=int(timeout * 1e6))
    else:
        answer = client.infer(name, [request], client_timeout=timeout)
    return answer.as_numpy(OUTPUT_NAME)


def bad_requests(url: str, name: str, image: np.ndarray, timeout: float) -> dict:
    """Triton's answer to a request of the wrong shape and one of the wrong type, and whether the next good
    request is still served."""
    import tritonclient.grpc as module
    from tritonclient.utils import InferenceServerException
    client = _connect(module, url, timeout)
    answers = {}
    try:
        for what, x, dtype in (('wrong shape', np.zeros((1, 3, 17, 17), np.float32), 'FP32'),
                               ('wrong type', image[None].astype(np.float64), 'FP64')):
            try:
                _infer(module, client, name, x, timeout, dtype)
                answers[what] = 'accepted'
            except InferenceServerException as e:
                answers[what] = first_line(e, 300)
        answers['served after'] = _infer(module, client, name, image[None], timeout).shape[0] == 1
    finally:
        client.close()
    return answers


def closed_loop(url: str, name: str, images: np.ndarray, concurrency: int, seconds: float, timeout: float,
                formed: List[int]) -> dict:
    """``concurrency`` clients, each sending one image at a time over gRPC for ``seconds``; every request has a
    ``timeout``, every client stops by the deadline, and the clients stop early when the server is gone."""
    import tritonclient.grpc as module
    latencies: List[float] = []
    errors: List[str] = []
    gone = threading.Event()
    first_batch = len(formed)

    def client_loop(offset: int) -> None:
        client = _connect(module, url, timeout)
        failures, i = 0, offset
        try:
            while time.perf_counter() < deadline and not gone.is_set():
                x = images[i % len(images)][None]
                i += 1
                started = time.perf_counter()
                try:
                    _infer(module, client, name, x, timeout)
                    latencies.append(time.perf_counter() - started)
                    failures = 0
                except Exception as e:  # the server's error, a timeout, a refused connection: counted, not raised
                    errors.append(first_line(e, 200))
                    failures += 1
                    if failures >= FAILURES_IN_A_ROW:
                        gone.set()
        finally:
            client.close()

    started = time.perf_counter()
    deadline = started + seconds
    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    last_answer = deadline + timeout + 5  # one bound for all: a request sent at the deadline has its timeout
    for thread in threads:
        thread.join(timeout=max(0.0, last_answer - time.perf_counter()))
    elapsed = time.perf_counter() - started
    batches = Counter(formed[first_batch:])
    ms = np.array(latencies) * 1e3
    return {
        'concurrency': concurrency, 'seconds': round(elapsed, 3), 'requests': len(latencies) + len(errors),
        'completed': len(latencies), 'errors': len(errors), 'first_errors': list(dict.fromkeys(errors))[:3],
        'throughput_ips': len(latencies) / elapsed if elapsed else 0.0,
        'latency_ms': {f'p{q}': float(np.percentile(ms, q)) for q in (50, 90, 99)} if len(ms) else None,
        'batches': {str(size): count for size, count in sorted(batches.items())},
        'mean_batch': (sum(s * c for s, c in batches.items()) / sum(batches.values())) if batches else None,
        'complete': not gone.is_set() and not any(t.is_alive() for t in threads),
    }


def serve_benchmark(loaded, output_dir: PathLike, backend: str = 'openvino', precision: str = 'int8',
                    concurrency: Sequence[int] = (1, 4, 16), seconds: float = 10.0, batching: Batching = Batching(),
                    onnx_dir: Optional[PathLike] = None, ports: Optional[Dict[str, int]] = None,
                    timeout: float = 10.0, progress=print) -> dict:
    """Serve ``loaded`` with one runner through Triton, check it, load it; returns what serve.json holds."""
    output_dir = ensure_writable_dir(output_dir)
    ports = ports or {'--http-port': 8000, '--grpc-port': 8001, '--metrics-port': 8002}
    import torch
    device = REGISTRY[backend].devices(precision, torch.cuda.is_available())[0]  # TensorRT: cuda; most: cpu
    spec = Spec(backend, precision, device)
    reason = spec.unavailable()
    if reason:
        raise ValueError(f'{backend} {precision} cannot run here: {reason}')
    check_ports(ports)
    names, x = sample_batch(loaded.model)
    x = x.numpy()
    name = f'{loaded.name}_{backend}_{precision}'
    report = {'schema_version': SCHEMA, 'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
              'model': {'name': loaded.name, 'classes': loaded.num_classes, 'weights': loaded.source},
              'served': {'name': name, 'backend': backend, 'precision': precision, 'device': device,
                         'max_batch_size': batching.max_batch, 'preferred_batch_size': list(batching.preferred),
                         'max_queue_delay_us': batching.max_queue_delay_us, 'instances': batching.instances,
                         'server': 'Triton Inference Server through PyTriton, on 127.0.0.1'},
              'machine': {'cpu': cpu_model(), 'threads': cpu_threads()}, 'levels': [], 'complete': False}
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-serve-') as workdir, contextlib.ExitStack() as stack:
        workdir = Path(workdir)
        graphs = graphs_in(onnx_dir, loaded, [spec.graph]) if onnx_dir and spec.graph else {}
        if spec.graph and spec.graph not in graphs:
            exported, failed = export_graphs(loaded, Path(onnx_dir) if onnx_dir else workdir, [spec.graph])
            if spec.graph in failed:
                raise ValueError(f'the {spec.graph} graph failed its parity gate at export: {failed[spec.graph]}')
            graphs.update(exported)
        artifact = artifact_for(spec, loaded.model, graphs, workdir, [batching.max_batch])
        runner = stack.enter_context(spec.runner(artifact, precision, device, cpu_threads()))
        local = [int(np.argmax(runner.infer(x[i:i + 1])[0])) for i in range(len(x))]
        progress(f'starting Triton with {name} (dynamic batching up to {batching.max_batch}) ...')
        started = time.perf_counter()
        try:
            formed = stack.enter_context(triton_server(runner, name, x.shape[1:], loaded.num_classes, batching,
                                                       ports, workdir / 'triton.log'))
        except Exception as e:  # PyTriton's own error types (a server that would not start, a refused binding)
            raise RuntimeError(f'Triton did not start: {first_line(e, 300)}') from None
        report['served']['start_seconds'] = round(time.perf_counter() - started, 2)
        http, grpc = f'127.0.0.1:{ports["--http-port"]}', f'127.0.0.1:{ports["--grpc-port"]}'
        try:
            report['check'] = {protocol: _agreement(names, local, classify(url, protocol, name, x, timeout))
                               for protocol, url in (('http', http), ('grpc', grpc))}
            report['bad_requests'] = bad_requests(grpc, name, x[0], timeout)
            for clients in concurrency:
                progress(f'load: {clients} client(s) for {seconds} s ...')
                level = closed_loop(grpc, name, x, clients, seconds, timeout, formed)
                report['levels'].append(level)
                if not level['complete']:
                    raise ServerGone(f'the server stopped answering at concurrency {clients} '
                                     f'({level["first_errors"][0] if level["first_errors"] else "no answer"}); '
                                     f'partial results in {output_dir / "serve.json"}, marked incomplete')
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


def _agreement(names: List[str], local: List[int], served: List[int]) -> dict:
    differ = [n for n, a, b in zip(names, local, served) if a != b]
    return {'images': len(names), 'same_top1': len(names) - len(differ), 'differ': differ}


def write_serve_report(report: dict, output_dir: Path) -> None:
    """serve.json, serve.md and serve.png, saved as one set (a partial run's too, marked incomplete)."""
    files = {'serve.json': (json.dumps(report, indent=2) + '\n').encode(), 'serve.md': render_markdown(report).encode()}
    if report['levels']:
        files['serve.png'] = render_plot(report)

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
    return '\n'.join(lines) + '\n'


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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m benchmarks.serve', description=__doc__.split('\n\n')[0].strip('`: '))
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
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    precision = parse_list(args.precision, PRECISIONS, 'precision')[0]
    if not args.checkpoint and not args.pretrained:
        raise UsageError('give --checkpoint RUN (or --pretrained): served answers are checked against trained weights')
    concurrency = parse_sizes(args.concurrency, '--concurrency', 1024)
    ports = {'--http-port': args.http_port, '--grpc-port': args.grpc_port, '--metrics-port': args.metrics_port}
    if len(set(ports.values())) < 3:
        raise UsageError('--http-port, --grpc-port and --metrics-port must differ')
    check_ports(ports)
    loaded = load_model(args.model, args.checkpoint, args.num_classes, args.pretrained)
    report = serve_benchmark(loaded, args.output_dir, args.backend, precision, concurrency, args.seconds,
                             batching_from(args), args.onnx_dir, ports, args.timeout,
                             progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(render_markdown(report))
    print(f'wrote {args.output_dir}/serve.json, serve.md, serve.png')
    if not served_as_expected(report):
        raise RuntimeError(f'served answers differ from the runner\'s, or a bad request was accepted: see '
                           f'{args.output_dir}/serve.md')
    return 0


def served_as_expected(report: dict) -> bool:
    """Every photograph's top-1 the runner's own over both protocols, both bad requests refused, the next served."""
    bad = report['bad_requests']
    return (all(c['same_top1'] == c['images'] for c in report['check'].values())
            and bad['wrong shape'] != 'accepted' and bad['wrong type'] != 'accepted' and bad['served after'])


if __name__ == '__main__':
    run_cli(main)
