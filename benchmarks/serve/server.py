"""Triton on localhost through PyTriton, for ``benchmarks.serve.benchmark``: ports, start, stop, and the server's logs.

PyTriton starts Triton's own server binary and binds one of our runners behind Triton's dynamic batcher. Whatever
the server or PyTriton logs goes to files in the run's temporary folder, never to the terminal: the command's
answer to a failure is one line, and a partial report keeps the logs' last lines.
"""
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from export.contract import INPUT_NAME, OUTPUT_NAME
from export.triton.repository import Batching
from export.triton.check import with_own_libpython


def check_ports(ports: Dict[str, int]) -> None:
    """One clear line for a port another process already listens on (before anything starts)."""
    for option, port in ports.items():
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                raise OSError(f'port {port} on 127.0.0.1 is in use: choose another with {option}') from None


def _own_libpython() -> None:
    """This process's ``LD_LIBRARY_PATH`` (which PyTriton hands to Triton) with this interpreter's libpython."""
    paths = with_own_libpython(os.environ.get('LD_LIBRARY_PATH', ''))
    if paths:
        os.environ['LD_LIBRARY_PATH'] = paths


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


class Formed(list):
    """The batch sizes the runner was called with, as Triton formed them; and the server's access token: PyTriton
    restricts Triton's model-config and statistics APIs to it, and perf_analyzer reads both."""
    access_token: Optional[str] = None


@contextlib.contextmanager
def triton_server(runner, name: str, chw: Sequence[int], classes: int, batching: Batching, ports: Dict[str, int],
                  log_file: Path, variants: Sequence[Tuple[str, list, Batching]] = ()) -> Iterator[List[int]]:
    """Triton on localhost serving ``runner`` as ``name`` with dynamic batching; yields the list of batch sizes
    the runner was called with (appended as they are formed). ``variants`` are more models bound in the same
    server, (name, runners, batching) each, one instance per runner: the settings sweep measures them one after
    the other without restarting the server. The server is stopped on exit."""
    _own_libpython()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    formed = Formed()

    def serving(model, record: Optional[List[int]] = None):
        @batch
        def infer(**inputs):
            x = inputs[INPUT_NAME]
            if record is not None:
                record.append(len(x))
            return {OUTPUT_NAME: np.asarray(model.infer(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)}
        return infer

    # exit_timeout_secs=0: the server is stopped once every load has ended, with no request in flight; waiting for
    # them (Triton's default 30 s, 5 s before) only delayed the stop
    config = TritonConfig(http_address='127.0.0.1', http_port=ports['--http-port'], grpc_address='127.0.0.1',
                          grpc_port=ports['--grpc-port'], metrics_address='127.0.0.1',
                          metrics_port=ports['--metrics-port'], log_file=log_file, exit_timeout_secs=0)
    _quiet_resource_tracker()
    with _pytriton_log(log_file.with_name('pytriton.log')):
        triton = Triton(config=config)
        try:
            for model_name, funcs, model_batching in [(name, [serving(runner, formed)], batching),
                                                       *[(v, [serving(r) for r in rs], b) for v, rs, b in variants]]:
                triton.bind(model_name=model_name, infer_func=funcs if len(funcs) > 1 else funcs[0], strict=True,
                            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=tuple(chw))],
                            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(classes,))],
                            config=ModelConfig(max_batch_size=model_batching.max_batch, batcher=DynamicBatcher(
                                max_queue_delay_microseconds=model_batching.max_queue_delay_us,
                                preferred_batch_size=list(model_batching.preferred))))
            triton.run()
            formed.access_token = triton.get_access_token()
            yield formed
        finally:
            triton.stop()
