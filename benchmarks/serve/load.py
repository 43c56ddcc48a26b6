"""The clients of ``benchmarks.serve.benchmark``: served answers checked, bad requests sent, and a closed-loop load.

The closed loop (N clients, each sending one image and waiting for its answer) stays beside ``perf_analyzer``
(``benchmarks.serve.perf_analyzer``, which measures the same levels) for what perf_analyzer cannot give: the batch sizes
Triton formed, counted where the runner is called, a timeout on every request, and a deadline that ends the run
with a partial report when the server dies (perf_analyzer then only fails). Its clients share a process with the
served runner, so it reads throughput 10-20 % below perf_analyzer's and a p50 about 12 % above (serve.md shows both).
"""
import threading
import time
from collections import Counter
from typing import List

import numpy as np

from alexnet_zoo.cli import first_line
from export.contract import INPUT_NAME, OUTPUT_NAME

FAILURES_IN_A_ROW = 3  # a client that meets this many failed requests in a row takes the server for gone


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
    ``timeout``, every client stops by the deadline, and the clients stop early when the server is gone. Each
    client connects and sends one untimed request first (as perf_analyzer warms up): the window starts when all
    have, so that it times serving, not connecting."""
    import tritonclient.grpc as module
    latencies: List[float] = []
    errors: List[str] = []
    gone = threading.Event()
    window = {}
    ready = threading.Barrier(concurrency, action=lambda: window.update(
        first_batch=len(formed), started=time.perf_counter(), deadline=time.perf_counter() + seconds))

    def request(client, x, timed: bool) -> bool:
        started = time.perf_counter()
        try:
            _infer(module, client, name, x, timeout)
        except Exception as e:  # the server's error, a timeout, a refused connection: counted, not raised
            errors.append(first_line(e, 200))
            return False
        if timed:
            latencies.append(time.perf_counter() - started)
        return True

    def client_loop(offset: int) -> None:
        client = _connect(module, url, timeout)
        failures, i = 0 if request(client, images[offset % len(images)][None], False) else 1, offset + 1
        try:
            ready.wait(timeout=timeout + 5)
        except threading.BrokenBarrierError:  # another client could not warm up in time: the window starts anyway
            pass
        window.setdefault('deadline', time.perf_counter() + seconds)
        try:
            while time.perf_counter() < window['deadline'] and not gone.is_set():
                failures = 0 if request(client, images[i % len(images)][None], True) else failures + 1
                i += 1
                if failures >= FAILURES_IN_A_ROW:
                    gone.set()
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(concurrency)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    last_answer = begun + 2 * timeout + 5 + seconds + 5  # warm-up, then the window: one bound for all
    for thread in threads:
        thread.join(timeout=max(0.0, last_answer - time.perf_counter()))
    elapsed = time.perf_counter() - window.get('started', begun)
    return _level(concurrency, elapsed, latencies, errors, Counter(formed[window.get('first_batch', 0):]),
                  complete=not gone.is_set() and not any(t.is_alive() for t in threads))


def _level(concurrency: int, elapsed: float, latencies: List[float], errors: List[str], batches: Counter,
           complete: bool) -> dict:
    """One concurrency level's figures, as serve.json holds them."""
    ms = np.array(latencies) * 1e3
    return {
        'concurrency': concurrency, 'seconds': round(elapsed, 3), 'requests': len(latencies) + len(errors),
        'completed': len(latencies), 'errors': len(errors), 'first_errors': list(dict.fromkeys(errors))[:3],
        'throughput_ips': len(latencies) / elapsed if elapsed else 0.0,
        'latency_ms': {f'p{q}': float(np.percentile(ms, q)) for q in (50, 90, 99)} if len(ms) else None,
        'batches': {str(size): count for size, count in sorted(batches.items())},
        'mean_batch': (sum(s * c for s, c in batches.items()) / sum(batches.values())) if batches else None,
        'complete': complete,
    }
