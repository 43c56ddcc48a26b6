"""The views every exported graph is judged on: PyTorch fp32's logits on them, their labels where known, and
ONNX Runtime runs of a graph on them."""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.data import parity_views
from alexnet_zoo.files import PathLike
from alexnet_zoo.samples import folder_images

from export.contract import INPUT_NAME, OUTPUT_NAME
from export.ort_session import ort_session
from export.parity import accuracy_figures, compare, judge, margin_std
from export.timing import time_calls
from export.int8.uint8 import cpu_graph


@dataclass
class ParityViews:
    """The views every graph is judged on, PyTorch fp32's logits on them, and their labels where known."""
    x: np.ndarray
    reference: np.ndarray
    description: str
    labels: Optional[np.ndarray] = None

    @classmethod
    def of(cls, loaded: LoadedModel, folder: Optional[PathLike] = None) -> 'ParityViews':
        images = folder_images(folder) if folder is not None else None
        names, x, source = parity_views(loaded.model, images)
        x = x.numpy()
        reference = reference_logits(loaded.model, x, torch.float32)
        bad = int(np.size(reference) - np.count_nonzero(np.isfinite(reference)))
        if bad:
            raise ValueError(f'{loaded.name}\'s own fp32 logits are not finite ({bad} NaN or Inf on the parity views: '
                             f'NaN or Inf weights?); there is nothing to export against')
        labels = folder_labels(images, loaded.label_names) if images is not None else None
        where = f'{len(images)} image(s) in {folder}' if images is not None else 'the sample photographs'
        description = (f'{len(x)} views of {where} (centre crops, random crops and flips), PyTorch fp32 median '
                       f'top-1 margin {margin_std(reference):.2f} std' + (', labelled' if labels is not None else ''))
        return cls(x, reference, description, labels[source.numpy()] if labels is not None else None)

    def figures(self, logits: np.ndarray) -> dict:
        """compare() against PyTorch fp32, and the accuracies where the views have labels."""
        figures = compare(self.reference, logits)
        if self.labels is not None:
            figures.update(accuracy_figures(self.reference, logits, self.labels))
        return figures

    def judge_graph(self, precision: str, trained: bool, as_cpu_runs: bool = True):
        """A graph -> its figures on these views, judged on ONNX Runtime's CPU provider, in the form the CPU
        runtimes run it (``export.int8.uint8.cpu_graph``) unless ``as_cpu_runs`` is False (another tool's graph, run as
        that tool wrote it)."""
        def judge_graph(graph: onnx.ModelProto) -> dict:
            source = cpu_graph(graph, precision) if as_cpu_runs else graph.SerializeToString()
            figures = self.figures(run_onnx(source, self.x))
            return {**figures, **judge(precision, figures, trained)}
        return judge_graph


def folder_labels(images: List[Tuple[str, object]], label_names: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """Labels of images laid out as ``<class>/<image>`` with the model's class names; None when not so laid out."""
    if not label_names:
        return None
    index = {name: i for i, name in enumerate(label_names)}
    classes = [Path(name).parts[0] if len(Path(name).parts) > 1 else None for name, _ in images]
    if not all(c in index for c in classes):
        return None
    return np.array([index[c] for c in classes])


def reference_logits(model: torch.nn.Module, x: np.ndarray, dtype: torch.dtype, chunk: int = 32) -> np.ndarray:
    """PyTorch eager logits in ``dtype`` (fp32, or fp64 on a float64 copy of the model), in chunks, as float64."""
    model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        out = [model(torch.from_numpy(x[i:i + chunk]).to(dtype)).double().numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(out)


def run_onnx(graph: Union[bytes, PathLike], x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The ``logits`` of a graph (serialized, or a file) for ``x``, with ONNX Runtime on the CPU."""
    session = ort_session(graph)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def ort_ms_b1(graph: Union[bytes, PathLike], x: np.ndarray, runs: int = 20) -> float:
    """Median ONNX Runtime CPU latency at batch 1, a quick figure for what a precision or a float layer costs
    (the benchmark measures properly)."""
    session = ort_session(graph)
    feed = {INPUT_NAME: np.ascontiguousarray(x[:1])}
    return float(np.median(time_calls(lambda: session.run([OUTPUT_NAME], feed), min_iters=runs, warmup_iters=3)))
