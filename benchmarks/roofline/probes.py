"""Measuring the ceilings in the same run as the rows (seconds): the clock under load, a sweep of GEMM shapes with
more than one library, read bandwidth from DRAM and from the last-level cache. A probe that fails is a skipped
figure with its reason in the report, never a crashed run.

GEMM shapes: a fully connected layer's (512 × 4096 by 4096 × 4096), a square one (2048³) and a convolution's
(AlexNet's conv 3 at batch 32 as a GEMM: 5408 × 2304 by 2304 × 384). Libraries: ``torch.mm`` (fp32, bf16),
``torch._int_mm`` (int8 in, int32 out: oneDNN's int8 GEMM) and a single OpenVINO MatMul layer (fp32 and bf16
through the precision hint; int8 as the Q/DQ MatMul our graphs contain, which also quantizes its input on every
call). Each figure is the best of a few calls after an untimed one: a ceiling is a best case.
"""
import glob
import os
import re
import statistics
import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from alexnet_zoo.cli import first_line
from export.timing import time_calls

from benchmarks.roofline.ceilings import COMPUTE_PRECISIONS, datasheet, documented_rate
from benchmarks.measure.environment import cpu_model, cpu_vendor_family, cpuinfo
from benchmarks.backends.torch_runner import exact_fp32

SHAPES = ((512, 4096, 4096), (2048, 2048, 2048), (5408, 2304, 384))  # M, K, N
QUICK_SHAPES = SHAPES[:1]
MIN_DRAM_SET = 512 << 20
REPEATS = 3


def best_seconds(run: Callable[[], object], repeats: int = REPEATS) -> float:
    """The fastest of ``repeats`` runs after one untimed (first touch, JIT, caches)."""
    return min(time_calls(run, min_iters=repeats, warmup_iters=1)) / 1e3


def native(precision: str, features: Dict[str, bool]) -> Optional[str]:
    """Why ``precision`` has no native ceiling on this CPU, or None."""
    if precision == 'bf16' and not (features.get('avx512_bf16') or features.get('amx')):
        return 'no native bf16 (AVX512-BF16 or AMX) on this CPU'
    if precision == 'int8' and not (features.get('avx512_vnni') or features.get('avx_vnni') or features.get('amx')):
        return 'no VNNI or AMX on this CPU: int8 is not faster than fp32 here'
    return None


# ---------------------------------------------------------------------------------------------- the GEMM probes

def torch_gemm(precision: str, shape: Tuple[int, int, int], device: str = 'cpu') -> float:
    """Operations per second of ``torch.mm`` (fp32, bf16, fp16) or ``torch._int_mm`` (int8) on ``device``."""
    m, k, n = shape
    if precision == 'int8':
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, device=device)
        call = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
        a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
        call = lambda: torch.mm(a, b)  # noqa: E731
    if device != 'cpu':
        inner, call = call, lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    return 2 * m * k * n / best_seconds(call)


def openvino_gemm(precision: str, shape: Tuple[int, int, int], threads: int) -> float:
    """Operations per second of one MatMul layer compiled by OpenVINO (int8: Q/DQ around it, as in our graphs)."""
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.backends.openvino_runner import openvino_core
    m, k, n = shape
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
    core = openvino_core()  # the process's one Core (benchmarks.backends.openvino_runner says why)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b''), 'CPU', {
        'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads,
        'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'})
    request = compiled.create_infer_request()
    x = rng.standard_normal((m, k)).astype(np.float32)
    return 2 * m * k * n / best_seconds(lambda: request.infer({0: x}))


def sweep(precision: str, shapes: Sequence[Tuple[int, int, int]], probes: Dict[str, Callable], skipped: dict) -> dict:
    """Every probe on every shape: {label: ops/s}; a failing probe is skipped with its reason."""
    measured = {}
    for library, probe in probes.items():
        for shape in shapes:
            label = f'{library} {"x".join(map(str, shape))}'
            try:
                measured[label] = probe(precision, shape)
            except Exception as e:  # a library without this precision or shape here: a figure missing, said why
                skipped[f'{precision} {label}'] = first_line(e)
                break
    return measured


# ----------------------------------------------------------------------------------------- clock and memory

def clock_ghz(threads: int) -> Tuple[Optional[float], str]:
    """The clock the cores in use run at while all of them are busy (``cycles_per_second``, x86-64), else the
    frequency /proc/cpuinfo reports (in a VM, the hypervisor's figure), else the model name's nominal one."""
    try:
        return round(cycles_per_second(threads) / 1e9, 3), (f'{ADDS:,} dependent 1-cycle adds timed on each of '
                                                            f'{threads} cores at once')
    except Exception:  # not x86-64, or executable memory refused
        return nominal_ghz()


def nominal_ghz() -> Tuple[Optional[float], str]:
    """What the system says the clock is: /proc/cpuinfo's ``cpu MHz`` (median of the usable cores), else the
    model name's "@ 2.10GHz"."""
    samples = _cpuinfo_mhz()
    if samples:
        return round(statistics.median(samples) / 1e3, 3), '/proc/cpuinfo cpu MHz'
    nominal = re.search(r'@\s*([\d.]+)\s*GHz', cpu_model())
    if nominal:
        return float(nominal.group(1)), 'the model name'
    return None, 'no clock reading here'


ADDS = 4 * 50_000_000
# long chain(long n): xor rax,rax; then n times: add rax,rax (x4), sub rdi,1, jnz; ret. Each add waits for the one
# before it (latency 1 cycle on every x86-64 core, and adds of a register to itself are not folded away, unlike
# additions of constants on recent cores), so one call takes 4n cycles.
CHAIN = bytes([0x48, 0x31, 0xc0, *[0x48, 0x01, 0xc0] * 4, 0x48, 0x83, 0xef, 0x01, 0x75, 0xee, 0xc3])


def cycles_per_second(threads: int) -> float:
    """Cycles per second of a core, timed on ``threads`` cores at once (the all-core clock): no performance
    counters are readable in a VM, and /proc/cpuinfo there reports the hypervisor's nominal figure, not the clock."""
    import ctypes
    import mmap
    import platform
    if platform.machine() not in ('x86_64', 'AMD64') or not hasattr(mmap, 'PROT_EXEC'):
        raise RuntimeError('the timed chain is x86-64 code')
    memory = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    memory.write(CHAIN)
    chain = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(memory)))
    rates: list = []

    def run():  # ctypes releases the GIL: the threads run on separate cores
        rates.append(ADDS / best_seconds(lambda: chain(ADDS // 4)))
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    del chain
    return statistics.median(rates)


def _cpuinfo_mhz() -> list:
    """``cpu MHz`` of each CPU this process may use."""
    usable = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else None
    return [float(cpu['cpu MHz']) for cpu in cpuinfo() if 'cpu MHz' in cpu and cpu.get('processor', '').isdigit()
            and (usable is None or int(cpu['processor']) in usable)]


def last_level_cache_bytes() -> Optional[int]:
    """The size of the highest cache level sysfs lists for CPU 0."""
    best = None
    for index in glob.glob('/sys/devices/system/cpu/cpu0/cache/index*'):
        try:
            level = int(open(f'{index}/level').read())
            size = open(f'{index}/size').read().strip()
        except (OSError, ValueError):
            continue
        number = re.match(r'(\d+)([KMG]?)', size)
        if number and (best is None or level > best[0]):
            best = (level, int(number.group(1)) << {'': 0, 'K': 10, 'M': 20, 'G': 30}[number.group(2)])
    return best[1] if best else None


def read_bandwidth(nbytes: int, device: str = 'cpu') -> float:
    """Bytes per second ``torch.sum`` reads from a float32 tensor of ``nbytes`` (its working set)."""
    x = torch.ones(max(nbytes // 4, 1), device=device)
    call = (lambda: x.sum()) if device == 'cpu' else (lambda: (x.sum(), torch.cuda.synchronize()))
    return x.numel() * 4 / best_seconds(call, repeats=5)


def memory(working_sets: Sequence[int], skipped: dict, device: str = 'cpu') -> dict:
    """DRAM (≥ 4× the last-level cache) and, for each working set that fits the last-level cache, that cache."""
    llc = last_level_cache_bytes() if device == 'cpu' else None
    dram_set = max(MIN_DRAM_SET, 4 * (llc or 0))
    out = {'llc_bytes': llc, 'llc': {}, 'dram': None}
    try:
        out['dram'] = {'bytes_per_s': read_bandwidth(dram_set, device), 'working_set': dram_set,
                       'method': f'torch.sum over {dram_set >> 20} MiB (≥ 4× the last-level cache), best of 5'}
    except Exception as e:  # too little memory for 4x a large cache, ...
        skipped['memory DRAM'] = first_line(e)
    measured: list = []  # (working set, figure): sizes within 10 % of one measured share its figure
    for size in sorted(set(working_sets)):
        if not llc or size > llc:
            continue
        figure = next((f for s, f in measured if size <= 1.1 * s), None)
        if figure is None:
            try:
                figure = {'bytes_per_s': read_bandwidth(size, device), 'working_set': size,
                          'method': f'torch.sum over {size / 1e6:.1f} MB (a row\'s bytes moved), best of 5'}
            except Exception as e:
                skipped[f'memory LLC {size}'] = first_line(e)
                continue
            measured.append((size, figure))
        out['llc'][str(size)] = figure
    return out


# ------------------------------------------------------------------------------------------------ per device

def measure_ceilings(threads: int, features: Dict[str, bool], working_sets: Sequence[int] = (), gpu: bool = False,
                     quick: bool = False, openvino: bool = True) -> dict:
    """Every ceiling of the CPU (and of the GPU, ``gpu``, where rows ran on one): {'cpu': ..., 'cuda': ...};
    ``working_sets`` are the bytes the rows move per batch (``ceilings.bytes_moved``), each measured from the
    last-level cache where it fits."""
    torch.set_num_threads(threads)
    shapes = QUICK_SHAPES if quick else SHAPES
    ceilings = {'cpu': _cpu(threads, features, working_sets, shapes, openvino)}
    if gpu and torch.cuda.is_available():
        ceilings['cuda'] = _gpu(shapes)
    return ceilings


def _cpu(threads, features, working_sets, shapes, openvino) -> dict:
    started, skipped = time.perf_counter(), {}
    vendor, family = cpu_vendor_family()
    ghz, clock_method = clock_ghz(threads)
    compute = {}
    probes = {'torch': torch_gemm}
    if openvino:
        probes['OpenVINO'] = lambda precision, shape: openvino_gemm(precision, shape, threads)
    for precision in COMPUTE_PRECISIONS:
        reason = native(precision, features)
        if reason:
            skipped[precision] = reason
            continue
        compute[precision] = _compute(*documented_rate(precision, features, threads, ghz, vendor, family),
                                      sweep(precision, shapes, probes, skipped))
    return {'name': cpu_model(), 'threads': threads, 'clock_ghz': ghz, 'clock_method': clock_method,
            'nominal_ghz': nominal_ghz()[0],
            'compute': compute, 'memory': memory(working_sets, skipped), 'skipped': skipped,
            'seconds': round(time.perf_counter() - started, 1)}


def _compute(documented: Optional[float], basis: str, measured: Dict[str, float]) -> dict:
    """One precision's compute ceilings: the documented rate and how it was reckoned, the best probe, every probe."""
    best = max(measured, key=measured.get) if measured else None
    return {'documented': documented, 'documented_basis': basis, 'attainable': measured[best] if best else None,
            'attainable_method': best, 'measured': measured}


def _gpu(shapes) -> dict:
    started, skipped = time.perf_counter(), {}
    name = torch.cuda.get_device_name()
    sheet = datasheet(name) or {}
    if not sheet:
        skipped['documented'] = f'no data-sheet figures for {name} here'
    probes = {'torch': lambda precision, shape: torch_gemm(precision, shape, 'cuda')}
    with exact_fp32():  # fp32 as the fp32 rows compute it, without TF32
        compute = {precision: _compute(sheet.get(precision), f'{name} data sheet, dense',
                                       sweep(precision, shapes, probes, skipped))
                   for precision in ('fp32', 'fp16', 'bf16', 'int8')}
    memory_figures = memory((), skipped, 'cuda')
    return {'name': name, 'compute': compute, 'memory': memory_figures, 'memory_documented': sheet.get('memory'),
            'skipped': skipped, 'seconds': round(time.perf_counter() - started, 1)}

