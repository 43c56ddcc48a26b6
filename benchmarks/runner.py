"""The one runner interface every backend implements (after Polygraphy's runners).

A runner is made from an artifact (a module, an ONNX file, an engine) and a device. ``infer`` takes a float32
NCHW batch and returns float32 logits, for parity. For timing, ``prepare`` places a batch where the runner
computes (device memory, an OpenVINO tensor, ...) once, and ``run`` performs one synchronous inference on it:
only ``run`` is inside the timed region.
"""
from typing import Any

import numpy as np


class BackendUnavailable(RuntimeError):
    """This backend/precision cannot run here; the message is the reason shown in the report's ``skipped``."""


class Runner:
    backend: str = ''
    precision: str = 'fp32'
    device: str = 'cpu'

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch in, float32 logits (N, num_classes) out."""
        return self.fetch(self.run(self.prepare(x)))

    def prepare(self, x: np.ndarray) -> Any:
        """Place a float32 NCHW batch where this runner computes; done once, outside the timed region."""
        raise NotImplementedError

    def run(self, prepared: Any) -> Any:
        """One inference on prepared inputs, finished (synchronised) when it returns; the timed region."""
        raise NotImplementedError

    def fetch(self, output: Any) -> np.ndarray:
        """What ``run`` returned, as float32 logits on the host."""
        return np.asarray(output, dtype=np.float32)

    def close(self) -> None:
        """Release sessions, engines and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.backend}, {self.precision}, {self.device})'
