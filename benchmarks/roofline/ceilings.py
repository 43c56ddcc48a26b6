"""The three ceilings a row is placed against, and the arithmetic that places it.

A runtime's own probe is not the machine's peak (OpenVINO's Q/DQ MatMul reached 1.15 TOPS int8 where
``torch._int_mm`` reached 2.6 and AMX is documented at 8.6 on the same 2 cores), so each precision has:

1. **documented**: operations per cycle per core of the widest unit the CPU has for it (AMX, AVX-512 VNNI,
   AVX512-BF16, AVX-512 or AVX2 FMA) × the cores used × the clock measured under load; on a GPU the data sheet;
2. **attainable**: the best rate a small sweep of GEMM shapes reached with more than one library (``probes``);
3. **memory**: read bandwidth from DRAM (a working set ≥ 4× the last-level cache) and from the last-level cache
   (a working set the size of the bytes the row moves), measured in the same run (``probes``).

A row's bound is the longer of computing its FLOPs at the attainable rate and moving its bytes (``bytes_moved``:
weights once, every layer's activations for the batch) at the bandwidth of where they fit (the last-level cache
when they fit in it, else DRAM); "× bound" is its median over that, and its share of the documented rate says how
far the hardware is from it.
"""
from typing import Dict, Optional, Tuple

# Operations (a multiply-add is 2) per cycle per core, per feature and precision, for cores with two 512-bit FMA
# ports (Intel Xeon Scalable Gold/Platinum, AMD Zen 5): Intel's optimization manual and AMX documentation
# (AMX: 2048 int8 / 1024 bf16; AVX-512 VNNI: 256 int8; AVX512-BF16: 128; AVX-512 FMA: 64 fp32; AVX2 FMA: 32).
OPS_PER_CYCLE: Dict[str, Dict[str, int]] = {
    'amx': {'int8': 2048, 'bf16': 1024},
    'avx512_vnni': {'int8': 256},
    'avx512_bf16': {'bf16': 128},
    'avx512': {'fp32': 64},
    'avx_vnni': {'int8': 128},
    'avx2': {'fp32': 32},
}
FEATURE_NAMES = {'amx': 'AMX', 'avx512_vnni': 'AVX-512 VNNI', 'avx512_bf16': 'AVX512-BF16', 'avx512': 'AVX-512 FMA',
                 'avx_vnni': 'AVX-VNNI', 'avx2': 'AVX2 FMA'}
# AMD family 25 (Zen 4) runs 512-bit instructions on 256-bit units, two passes each: half the rate per cycle.
HALF_WIDTH_512 = {('AuthenticAMD', 25)}

# Dense (no sparsity) data-sheet peaks of the GPUs we are lent or users name, matched on the device name.
GPU_DATASHEET: Dict[str, Dict[str, float]] = {
    'H200': {'fp32': 67e12, 'fp16': 989e12, 'bf16': 989e12, 'int8': 1979e12, 'memory': 4.8e12},
    'H100 PCIe': {'fp32': 51e12, 'fp16': 756e12, 'bf16': 756e12, 'int8': 1513e12, 'memory': 2.0e12},
    'H100': {'fp32': 67e12, 'fp16': 989e12, 'bf16': 989e12, 'int8': 1979e12, 'memory': 3.35e12},
    'A100': {'fp32': 19.5e12, 'fp16': 312e12, 'bf16': 312e12, 'int8': 624e12, 'memory': 2.0e12},
    'L4': {'fp32': 30.3e12, 'fp16': 121e12, 'bf16': 121e12, 'int8': 242.5e12, 'memory': 0.3e12},
}
COMPUTE_PRECISIONS = ('fp32', 'bf16', 'int8')
# Bytes per activation element a row's precision moves. int8 rows: 1, as if every activation between quantized
# layers stayed int8 (an approximation: a runtime dequantizes some of them, around the layers kept in float).
ELEMENT_BYTES = {'fp32': 4, 'fp16': 2, 'bf16': 2, 'int8': 1}


def documented_rate(precision: str, features: Dict[str, bool], cores: int, ghz: Optional[float],
                    vendor: str = '', family: int = 0) -> Tuple[Optional[float], str]:
    """Operations per second the CPU's documentation promises for ``precision`` on ``cores`` at ``ghz``, and how
    it was reckoned (or, with None, why there is no figure)."""
    units = [(ops[precision], feature) for feature, ops in OPS_PER_CYCLE.items()
             if precision in ops and features.get(feature)]
    if not units:
        return None, f'no {precision} unit this CPU documents (needs {_needs(precision)})'
    per_cycle, feature = max(units)
    half = feature != 'amx' and feature.startswith('avx512') and (vendor, family) in HALF_WIDTH_512
    per_cycle //= 2 if half else 1
    if not ghz:
        return None, f'{FEATURE_NAMES[feature]}: {per_cycle} ops/cycle/core, but the clock is unknown'
    return per_cycle * cores * ghz * 1e9, (f'{FEATURE_NAMES[feature]}: {per_cycle} ops/cycle/core'
                                           f'{" (512-bit on 256-bit units)" if half else ""} × {cores} cores × '
                                           f'{ghz:.2f} GHz')


def _needs(precision: str) -> str:
    return ' or '.join(FEATURE_NAMES[f] for f, ops in OPS_PER_CYCLE.items() if precision in ops)


def datasheet(gpu_name: str) -> Optional[Dict[str, float]]:
    """The data-sheet peaks of a GPU by its name (the most specific entry that matches), or None."""
    for key in sorted(GPU_DATASHEET, key=len, reverse=True):
        if key in gpu_name:
            return GPU_DATASHEET[key]
    return None


def ceiling_precision(row_precision: str, compute: dict) -> str:
    """The ceiling a row is held to: its own precision's where the device has one, else fp32's (an fp16 graph on
    a CPU computes in fp32; int8 without VNNI or AMX is no faster than fp32)."""
    return row_precision if row_precision in compute else 'fp32'


def bytes_moved(row: dict, activation_bytes: float = 0.0) -> int:
    """Bytes one batch of ``row`` moves at least: its weights once, and ``activation_bytes`` (fp32 bytes per image,
    ``model_bytes``) for each image at its precision's element size; 0 for activations not counted (old reports)."""
    per_image = activation_bytes * ELEMENT_BYTES.get(row['precision'], 4) / 4
    return int(row['weight_bytes'] + row['batch_size'] * per_image)


def memory_ceiling(nbytes: int, memory: dict) -> Tuple[Optional[str], Optional[float]]:
    """Where a row's bytes are read from, and at what rate: the last-level cache when they fit in it (measured at
    that working set), else DRAM. All of a batch's bytes must fit, though a layer's activations are gone once the
    next one has read them: a cautious test of what stays in the cache. A size the run did not probe (a report
    placed again) takes the probe nearest below it, the higher of the rates near it."""
    llc_bytes, sets = memory.get('llc_bytes'), memory.get('llc') or {}
    if llc_bytes and nbytes <= llc_bytes and sets:
        below = [int(size) for size in sets if int(size) <= nbytes] or [min(int(size) for size in sets)]
        return 'llc', sets[str(nbytes) if str(nbytes) in sets else str(max(below))]['bytes_per_s']
    dram = memory.get('dram')
    return ('dram', dram['bytes_per_s']) if dram else (None, None)


def place(row: dict, ceilings: dict, flops_per_image: float, activation_bytes: float = 0.0) -> Optional[dict]:
    """One row against its device's ceilings: rate achieved, intensity (operations per byte moved), the bound that
    applies and how far it is from it, and its share of the documented rate; None where the device's ceilings
    were not measured. ``activation_bytes``: fp32 bytes per image (``bytes_moved``)."""
    device = ceilings.get('cuda' if str(row['device']).startswith('cuda') else 'cpu')
    if not device or 'error' in device or not row.get('weight_bytes') or not row.get('median_ms'):
        return None
    precision = ceiling_precision(row['precision'], device['compute'])
    compute = device['compute'].get(precision, {})
    attainable, documented = compute.get('attainable'), compute.get('documented')
    moved = bytes_moved(row, activation_bytes)
    where, bandwidth = memory_ceiling(moved, device['memory'])
    ops, seconds = flops_per_image * row['batch_size'], row['median_ms'] / 1e3
    compute_s = ops / attainable if attainable else 0.0
    memory_s = moved / bandwidth if bandwidth else 0.0
    bound_s = max(compute_s, memory_s)
    return {'ops_per_s': ops / seconds, 'bytes': moved, 'bytes_per_s': moved / seconds,
            'intensity': ops / moved, 'ceiling': precision if attainable else None,
            'attainable_ops_per_s': attainable, 'documented_ops_per_s': documented,
            'memory': where, 'memory_bytes_per_s': bandwidth,
            'bound': None if not bound_s else 'compute' if compute_s >= memory_s else 'memory',
            'bound_ms': bound_s * 1e3 if bound_s else None, 'times_bound': seconds / bound_s if bound_s else None,
            'share_of_documented': ops / seconds / documented if documented else None}


def what_bounds(row: dict, profile: Optional[dict]) -> str:
    """One sentence on what bounds the fastest row now: the ceiling it is held to, how far it is from it, and the
    layer (or kernel) that takes most of its time."""
    f = row.get('roofline')
    head = f'{row["backend"]} {row["precision"]} b{row["batch_size"]}'
    if not f or not f['bound']:
        parts = [f'{head}: no ceiling measured']
    else:
        rate = (f'{f["ceiling"]} attainable {f["attainable_ops_per_s"] / 1e12:.2f} TOP/s' if f['bound'] == 'compute'
                else f'{f["memory"].upper()} read {f["memory_bytes_per_s"] / 1e9:.0f} GB/s')
        parts = [f'{head}: {f["times_bound"]:.1f}× its {f["bound"]} bound ({rate})']
        if f['share_of_documented']:
            parts.append(f'{100 * f["share_of_documented"]:.0f} % of the documented {f["ceiling"]} rate '
                         f'({f["documented_ops_per_s"] / 1e12:.2f} TOP/s)')
    layers = (profile or {}).get('layers')
    if layers:
        top = layers[0]
        parts.append(f'most time in {top["name"]} ({top["type"]}, {top["kernel"]}: {100 * top["share"]:.0f} %)')
    return '; '.join(parts)
