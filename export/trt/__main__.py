"""``python -m export.trt``: build a TensorRT engine from an exported graph, verify one, or lint a graph on the CPU.

Nothing here imports torch or TensorRT until a build or a verification asks for the GPU: ``--check-only`` needs
onnx and numpy alone.
"""
import argparse
import sys
from pathlib import Path
from typing import Sequence

from alexnet_zoo.cli import MAX_BATCH, ArgumentParser, positive, run_cli

from export.trt import __doc__ as package_doc
from export.export_manifest import check_export
from export.trt.build import BatchProfile, build_engine
from export.trt.preflight import check_onnx
from export.trt.runtime import load_engine


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m export.trt', description=package_doc.split('\n\n')[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--onnx', type=Path, help='ONNX graph from export.onnx (model.onnx, model.fp16.onnx, model.int8.onnx)')
    what.add_argument('--verify', type=Path, metavar='PLAN',
                      help='check an engine against its build record and this machine, then deserialize it')
    parser.add_argument('--output', type=Path, help='engine path (default: model.<precision>.plan beside the ONNX file)')
    parser.add_argument('--min-batch', type=positive(int, MAX_BATCH), default=1)
    parser.add_argument('--opt-batch', type=positive(int, MAX_BATCH), default=8)
    parser.add_argument('--max-batch', type=positive(int, MAX_BATCH), default=64)
    parser.add_argument('--timing-cache', type=Path, help='TensorRT timing cache to read and write back')
    parser.add_argument('--workspace-gb', type=positive(float, 1024), help='limit on TensorRT\'s build workspace (GiB)')
    parser.add_argument('--check-only', action='store_true',
                        help='lint the graph on the CPU (no GPU, no TensorRT): exit 0 if it would parse, else 1')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)

    if args.verify:
        _, engine, record = load_engine(args.verify)
        shapes = record['input']
        print(f'ok: {args.verify} — TensorRT {record["tensorrt_version"]}, {record["gpu"]["name"]}, '
              f'{record["precision"]}, batch {shapes["min"][0]}..{shapes["max"][0]}, {engine.num_io_tensors} I/O tensors')
        return 0
    check_export([args.onnx], required=False)  # a graph of export.onnx's folder must be the one it lists
    if args.check_only:
        problems = check_onnx(args.onnx)
        for problem in problems:
            print(f'error: {args.onnx}: {problem}', file=sys.stderr)
        if not problems:
            print(f'ok: {args.onnx} passes the TensorRT preflight')
        return 1 if problems else 0
    profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    result = build_engine(args.onnx, args.output, profile, args.timing_cache, args.workspace_gb)
    print(f'wrote {result.plan} and {result.record_path.name} ({result.record["precision"]}, '
          f'{result.record["build_seconds"]} s)')
    return 0


if __name__ == '__main__':
    run_cli(main)
