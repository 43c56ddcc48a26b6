"""What a reader needs to trust (or discount) a report's numbers: the machine and the software that ran it."""
import os
import platform
from importlib import metadata
from typing import Any, Dict, List, Optional, Tuple

PACKAGES = ('torch', 'torchvision', 'timm', 'numpy', 'onnx', 'onnxruntime', 'onnxruntime-gpu', 'openvino',
            'tensorrt', 'matplotlib')


def environment(threads: int) -> Dict[str, Any]:
    import torch
    return {
        'cpu': {'model': cpu_model(), 'logical_cores': os.cpu_count(), 'usable_cores': threads,
                'features': cpu_features(), 'torch_capability': torch.backends.cpu.get_cpu_capability()},
        'memory_gb': memory_gb(),
        'os': platform.platform(),
        'python': platform.python_version(),
        'packages': {name: version for name in PACKAGES if (version := package_version(name))},
        'gpu': gpu(),
        'threads': threads,
        'onnxruntime_providers': _ort_providers(),
    }


def cpu_threads() -> int:
    """Cores this process may use: every runner gets the same number of compute threads (one stream)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_has_amx() -> bool:
    """AMX tiles: what makes bf16 fast on a CPU (without them PyTorch emulates bf16, slower than fp32)."""
    import torch
    return bool(torch.cpu._is_amx_tile_supported())


def cpuinfo() -> List[Dict[str, str]]:
    """/proc/cpuinfo, one dict of fields per logical CPU (empty where there is no such file)."""
    try:
        with open('/proc/cpuinfo') as f:
            blocks = f.read().split('\n\n')
    except OSError:
        return []
    return [dict((key.strip(), value.strip()) for key, _, value in (line.partition(':') for line in block.splitlines()))
            for block in blocks if block.strip()]


def _first_cpu() -> Dict[str, str]:
    return next(iter(cpuinfo()), {})


def cpu_model() -> str:
    return _first_cpu().get('model name') or platform.processor() or platform.machine()


def cpu_vendor_family() -> Tuple[str, int]:
    """The CPU's vendor and family from /proc/cpuinfo ('GenuineIntel', 6; 'AuthenticAMD', 25 is Zen 4), or ('', 0)."""
    fields = _first_cpu()
    family = fields.get('cpu family', '')
    return fields.get('vendor_id', ''), int(family) if family.isdigit() else 0


def cpu_features() -> Dict[str, bool]:
    """The instruction sets that decide int8 and bf16 speed on a CPU."""
    import torch
    flags = set(_first_cpu().get('flags', '').split())
    return {'avx2': bool(torch.cpu._is_avx2_supported()), 'avx512': bool(torch.cpu._is_avx512_supported()),
            'avx512_vnni': bool(torch.cpu._is_vnni_supported()) or 'avx512_vnni' in flags,
            'avx512_bf16': bool(torch.cpu._is_avx512_bf16_supported()), 'avx_vnni': 'avx_vnni' in flags,
            'amx': cpu_has_amx()}


def memory_gb() -> Optional[float]:
    try:
        return round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu() -> Optional[Dict[str, Any]]:
    import torch
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {'name': props.name, 'memory_gb': round(props.total_memory / 2 ** 30, 1),
            'compute_capability': f'{props.major}.{props.minor}', 'cuda': torch.version.cuda}


def _ort_providers():
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())
