"""``make gpu-check``: what an NVIDIA GPU machine can show in a few minutes, prepared in advance.

    PYTHONPATH=. python3 -m benchmarks.gpu_check --output-dir out/gpu-check

For a machine whose Python already has CUDA PyTorch, timm, onnx, onnxruntime, scikit-image (the sample
photographs), matplotlib and tqdm, but no TensorRT, no OpenVINO and no package index: nothing is installed. In order, each step skipped with its reason when what it needs is
missing, everything written to one folder:

1. the GPU and the software (``gpu_check.json``);
2. one training epoch of alexnet_bn on CUDA on crops of the sample photographs (``run/``), its time;
3. the benchmark's PyTorch rows on CUDA (eager and torch.compile; fp32, fp16, bf16; batch 1 and 32) against the
   CPU baseline, with parity on the 256 views (``report/``);
4. the tests marked ``gpu`` that need no TensorRT (``pytest.log``).

Exit 0 when every step that ran passed, 1 when one failed or no GPU is visible.
"""
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from alexnet_zoo.cli import ArgumentParser, run_cli
from alexnet_zoo.files import ensure_writable_dir, write_text_atomic

TRAIN_CROPS = (6, 2)  # per photograph: train, val


def gpu_facts() -> dict:
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError('no CUDA GPU visible to PyTorch: make gpu-check runs on a machine with an NVIDIA GPU')
    props = torch.cuda.get_device_properties(0)
    facts = {'gpu': props.name, 'memory_gb': round(props.total_memory / 2 ** 30, 1),
             'compute_capability': f'{props.major}.{props.minor}', 'cuda': torch.version.cuda,
             'torch': torch.__version__, 'python': platform.python_version()}
    for name in ('timm', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'pytest'):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            facts[name] = None
    return facts


def train_one_epoch(out: Path) -> dict:
    from alexnet_zoo.samples import write_image_folder
    from alexnet_zoo.train import Settings, train
    data = write_image_folder(out / 'photos', None, *TRAIN_CROPS)
    started = time.perf_counter()
    metrics = train(data, out / 'run', Settings(epochs=1, lr=1e-3, color_jitter=0.0, batch_size=32), workers=2,
                    progress=False)
    return {'seconds': round(time.perf_counter() - started, 1), 'device': metrics['device'],
            'val_top1': metrics['epochs'][-1]['val_top1']}


def benchmark_cuda_rows(out: Path) -> dict:
    from alexnet_zoo.checkpoint import load_model
    from benchmarks.run.harness import run_benchmark
    from benchmarks.report.schema import plain
    from benchmarks.report.summary import exit_code
    report = run_benchmark(load_model(checkpoint=out / 'run'), out / 'report', backends='torch,torch-compile',
                           precisions='fp32,fp16,bf16', batch_sizes=(1, 32), devices=('cuda',), progress=False,
                           command='python -m benchmarks.gpu_check')
    rows = [{'backend': r.backend, 'precision': r.precision, 'device': r.device, 'batch': r.batch_size,
             'median_ms': round(r.median_ms, 3), 'speedup': r.speedup_vs_torch_fp32,
             'sqnr_db': r.parity.sqnr_db, 'passed': r.parity.passed} for r in report.results]
    return {'rows': rows, 'skipped': plain(report.skipped), 'exit_code': exit_code(report),
            'seconds': report.duration_s}


def gpu_tests(out: Path) -> dict:
    if missing(('pytest',)):
        return {'skipped': 'pytest is not installed here'}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'gpu and not tensorrt', '-p', 'no:cacheprovider',
                           '-q', '-rs', str(repo / 'tests')], capture_output=True, text=True, cwd=repo)
    (out / 'pytest.log').write_text(proc.stdout + proc.stderr)
    if proc.returncode == 5:  # pytest: no test selected
        return {'skipped': 'no test marked gpu without tensorrt was collected'}
    return {'exit_code': proc.returncode, 'summary': (proc.stdout.strip().splitlines() or [''])[-1]}


def missing(modules) -> list:
    """The modules of ``modules`` this Python cannot import."""
    import importlib.util
    return [m for m in modules if importlib.util.find_spec(m) is None]


def main(argv: Sequence[str] = None) -> int:
    parser = ArgumentParser(prog='python -m benchmarks.gpu_check', description=__doc__.splitlines()[0])
    parser.add_argument('--output-dir', default='out/gpu-check')
    args = parser.parse_args(argv)
    out = ensure_writable_dir(args.output_dir)
    result = {'machine': gpu_facts()}
    print(json.dumps(result['machine']))
    failed = False
    needs = {'training': ('skimage',), 'benchmark': ('skimage', 'matplotlib', 'tqdm'), 'tests': ()}
    for name, step in (('training', train_one_epoch), ('benchmark', benchmark_cuda_rows), ('tests', gpu_tests)):
        started = time.perf_counter()
        absent = missing(needs[name])
        if absent:  # the sample photographs come from scikit-image, the report's plots from matplotlib
            result[name] = {'skipped': f'needs {", ".join(absent)}, not installed here'}
            print(f'{name}: skipped ({result[name]["skipped"]})')
            continue
        try:
            result[name] = step(out)
        except Exception as e:  # one step's failure is reported, the next steps still run
            result[name] = {'error': f'{type(e).__name__}: {e}'.splitlines()[0]}
        failed |= bool(result[name].get('error')) or result[name].get('exit_code', 0) != 0
        print(f'{name} ({time.perf_counter() - started:.0f} s): {json.dumps(result[name])[:2000]}')
        write_text_atomic(out / 'gpu_check.json', json.dumps(result, indent=2) + '\n')
    return 1 if failed else 0


if __name__ == '__main__':
    run_cli(main)
