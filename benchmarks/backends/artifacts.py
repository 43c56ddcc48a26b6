"""What the runners are made from: the ONNX graphs (reused from ``--onnx-dir`` or exported by ``export.onnx``, the
project's one exporter) and the TensorRT engines built from them (``export.trt``)."""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from alexnet_zoo.checkpoint import LoadedModel, weights_sha256
from alexnet_zoo.cli import first_line
from alexnet_zoo.files import PathLike
from export.contract import FILENAMES, read_metadata
from export.export_manifest import exported_graphs
from export.int8.calibration import calibration_crops
from export.onnx import ParityGateError, export_onnx
from export.parity import gate_failure
from export.runner import BackendUnavailable
from export.int8.torch_int8 import quantize_pt2e
from export.trt.build import BatchProfile, build_engine

from benchmarks.backends.registry import Spec


def graphs_in(onnx_dir: PathLike, loaded: LoadedModel, precisions: Sequence[str]) -> Dict[str, Path]:
    """Graphs that export.onnx already wrote in ``onnx_dir``, checked (from their metadata) to come from the same
    model, classes and weights (the hash export.onnx wrote), and to be the files the folder's export.json lists;
    a precision whose file is absent is left out (to be exported there). Graphs of other weights are refused, never
    measured against this checkpoint."""
    onnx_dir = Path(onnx_dir)
    if onnx_dir.exists() and not onnx_dir.is_dir():
        raise NotADirectoryError(f'--onnx-dir is not a folder: {onnx_dir}')
    graphs, _ = exported_graphs(onnx_dir, precisions)  # each the file its export wrote, none from one under way
    weights = weights_sha256(loaded.model) if graphs else None
    for path in graphs.values():
        meta = read_metadata(path)
        found = (meta.get('model_name'), meta.get('num_classes'))
        if found != (loaded.name, loaded.num_classes):
            raise ValueError(f'{path} was exported from {found[0]} with {found[1]} classes, not {loaded.name} with '
                             f'{loaded.num_classes}')
        exported = meta.get('weights_sha256')
        if exported != weights:
            what = f'weights {exported[:12]}' if exported else 'weights of unknown hash (an older export)'
            raise ValueError(f'--onnx-dir holds graphs of other weights: {path} was exported from {what}, this '
                             f'checkpoint is {weights[:12]}; delete the folder\'s graphs or choose another folder')
    return graphs


def earlier_files(onnx_dir: PathLike, precisions: Sequence[str]) -> List[str]:
    """The files an earlier export of ``precisions`` left in ``onnx_dir`` without their graph (an int8 export that
    failed its gate keeps its ranges and per-layer diagnosis there): a benchmark that exports these precisions again
    must not write over them."""
    stems = [FILENAMES[p][:-len('.onnx')] for p in precisions if p != 'fp32']  # model.onnx's stem is everyone's
    return sorted(f.name for stem in stems for f in Path(onnx_dir).glob(f'{stem}.*') if f.is_file())


def export_graphs(loaded: LoadedModel, workdir: Path, precisions: Sequence[str],
                  calibration_images: Optional[PathLike] = None, failed_dir: Optional[Path] = None,
                  progress: Optional[Callable[[str], None]] = None) -> Tuple[Dict[str, Path], Dict[str, str]]:
    """The ONNX graphs for ``precisions`` (int8 remedied by export.onnx's ``auto`` fallback where it must be), and
    for each graph that failed its parity gate at export which figures failed it: such a graph is not written
    to ``workdir`` but, with ``failed_dir``, there, and its path is among those returned, to be measured."""
    try:
        result = export_onnx(loaded, workdir, precisions=tuple(precisions), calibration_images=calibration_images,
                             progress=progress, failed_dir=failed_dir)
    except ParityGateError as e:
        result = e.result
    failed = {r['precision']: gate_failure(r['precision'], r) for r in result.rows if r.get('passed') is False}
    return {p: Path(path) for p, path in {**result.failed_paths, **result.paths}.items()}, failed


def artifact_for(spec: Spec, model: torch.nn.Module, graphs: Dict[str, Path], workdir: Path,
                 batch_sizes: Sequence[int], calibration_images: Optional[PathLike] = None):
    """What the row's runner is made from: the PyTorch module (int8: quantized by PT2E on the crops that calibrate
    the ONNX int8 graph), the exported graph, or an engine built from it."""
    if spec.runner.artifact == 'module' and spec.precision == 'int8':
        try:
            return quantize_pt2e(model, calibration_crops(model, calibration_images)[0])
        except (FileNotFoundError, ValueError):
            raise  # the calibration folder: the user's mistake, said as export.onnx says it
        except Exception as e:  # a model torch.export or the quantizer cannot take: this row skipped, saying why
            raise BackendUnavailable(f'PT2E int8 quantization failed: {first_line(e)}') from None
    if spec.runner.artifact == 'module':
        return model
    if spec.runner.artifact == 'onnx':
        return graphs[spec.graph]
    return engine_for(graphs[spec.graph], spec.graph, workdir, batch_sizes)


def engine_for(graph: Path, precision: str, workdir: Path, batch_sizes: Sequence[int]) -> Path:
    """A TensorRT engine built from the ``precision`` graph for the benchmarked batch sizes (tuned for the largest)."""
    largest = max(batch_sizes)
    return build_engine(graph, workdir / f'model.{precision}.plan', BatchProfile(1, largest, largest)).plan
