"""Reading an ONNX file with one clear error, for every tool that takes a graph (export.onnx, export.trt).

Kept free of torch so that the TensorRT preflight stays a light import.
"""
from pathlib import Path
from typing import Union

import onnx


def read_onnx(path: Union[str, Path], load_external_data: bool = True) -> onnx.ModelProto:
    """The parsed graph; FileNotFoundError / ValueError (one line) for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ONNX file not found: {path}')
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf's DecodeError, a missing external-data file, ...
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f'not an ONNX model: {path} ({reason})') from None
    if not model.graph.node:  # protobuf parses many random byte strings as an empty model
        raise ValueError(f'not an ONNX model: {path} (no graph nodes)')
    return model
