"""What this machine can do at most, measured in the same run as the rows (a few seconds): the ceilings a row is
placed against.

- memory read bandwidth: ``torch.sum`` over a 512 MiB float32 tensor (far beyond any cache) with the run's
  threads, best of 5;
- peak matrix-multiply rate per precision the CPU runs natively: a single-layer OpenVINO model (one MatMul of
  512 x 4096 by 4096 x 4096; fp32 and bf16 through the precision hint, int8 as a Q/DQ MatMul that OpenVINO runs
  as an int8 GEMM) and PyTorch's ``torch.mm`` of 2048 x 2048 (fp32, bf16), each best of 5; the ceiling is the best
  of the two, both figures kept. bf16 is measured only on CPUs with native bf16 (AVX512-BF16 or AMX), int8 only
  with VNNI or AMX.
"""
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch

from export.timing import time_calls

BANDWIDTH_BYTES = 512 << 20
GEMM = (512, 4096, 4096)  # M, K, N of the OpenVINO MatMul
TORCH_N = 2048


def best_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of ``repeats`` runs after one untimed (first-touch, JIT, caches): a ceiling is a best case."""
    return min(time_calls(run, min_iters=repeats, warmup_iters=1)) / 1e3


def memory_read_bandwidth() -> float:
    """Bytes per second read by ``torch.sum`` over a tensor much larger than any cache."""
    x = torch.ones(BANDWIDTH_BYTES // 4)
    return BANDWIDTH_BYTES / best_seconds(lambda: x.sum())


def torch_matmul_rate(dtype: torch.dtype) -> float:
    a, b = torch.randn(TORCH_N, TORCH_N).to(dtype), torch.randn(TORCH_N, TORCH_N).to(dtype)
    return 2 * TORCH_N ** 3 / best_seconds(lambda: torch.mm(a, b))


def openvino_matmul_rate(precision: str, threads: int) -> float:
    """Operations per second of one MatMul layer compiled by OpenVINO (int8: Q/DQ around it, as in our graphs)."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    m, k, n = GEMM
    rng = np.random.default_rng(0)
    if precision == 'int8':
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), 'w_q'),
                 numpy_helper.from_array(np.array(0.01, np.float32), 'w_scale'),
                 numpy_helper.from_array(np.array(0.05, np.float32), 'x_scale'),
                 numpy_helper.from_array(np.array(0, np.int8), 'zero')]
        nodes = [helper.make_node('QuantizeLinear', ['x', 'x_scale', 'zero'], ['x_q']),
                 helper.make_node('DequantizeLinear', ['x_q', 'x_scale', 'zero'], ['x_dq']),
                 helper.make_node('DequantizeLinear', ['w_q', 'w_scale', 'zero'], ['w']),
                 helper.make_node('MatMul', ['x_dq', 'w'], ['y'])]
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), 'w')]
        nodes = [helper.make_node('MatMul', ['x', 'w'], ['y'])]
    graph = helper.make_graph(nodes, f'{precision}_matmul', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b''), 'CPU', {
        'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads,
        'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'})
    request = compiled.create_infer_request()
    x = rng.standard_normal((m, k)).astype(np.float32)
    return 2 * m * k * n / best_seconds(lambda: request.infer({0: x}))


def native(precision: str, features: Dict[str, bool]) -> Optional[str]:
    """Why ``precision`` has no native ceiling on this CPU, or None."""
    if precision == 'bf16' and not (features.get('avx512_bf16') or features.get('amx')):
        return 'no native bf16 (AVX512-BF16 or AMX) on this CPU'
    if precision == 'int8' and not (features.get('avx512_vnni') or features.get('amx')):
        return 'no VNNI or AMX on this CPU: int8 is not faster than fp32 here'
    return None


def measure_limits(threads: int, features: Dict[str, bool], openvino: bool = True) -> dict:
    """The machine's ceilings: memory read bandwidth and peak operations per second per native precision."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    peaks, skipped = {}, {}
    for precision, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16), ('int8', None)):
        reason = native(precision, features)
        if reason:
            skipped[precision] = reason
            continue
        methods = {}
        if dtype is not None:
            methods[f'torch.mm {TORCH_N}x{TORCH_N}'] = torch_matmul_rate(dtype)
        if openvino:
            methods['OpenVINO MatMul {}x{}x{}{}'.format(*GEMM, ' (Q/DQ int8)' if precision == 'int8' else '')] = \
                openvino_matmul_rate(precision, threads)
        if methods:
            best = max(methods, key=methods.get)
            peaks[precision] = {'ops_per_s': methods[best], 'method': best, 'measured': methods}
        else:
            skipped[precision] = 'OpenVINO is not installed: no int8 GEMM to measure with'
    return {
        'memory_read_bytes_per_s': memory_read_bandwidth(),
        'memory_method': f'torch.sum over a {BANDWIDTH_BYTES >> 20} MiB float32 tensor, {threads} threads, best of 5',
        'peak': peaks, 'peak_skipped': skipped, 'threads': threads,
        'seconds': round(time.perf_counter() - started, 1),
    }
