"""``python -m benchmarks``: parity and latency of every backend and precision, in one report.

A thin layer over ``benchmarks.run_benchmark``. Exit 0 when every judged parity gate passes, 1 when one fails
(or on a bad input file), 2 for usage errors.
"""
import shlex
import sys
from typing import Sequence

from alexnet_zoo.checkpoint import load_model
from alexnet_zoo.cli import ArgumentParser, add_model_arguments, bounded, positive, run_cli, seed
from alexnet_zoo.samples import folder_images

from benchmarks.run.harness import run_benchmark, timing_config
from benchmarks.measure.latency import DEFAULT_TIMING, QUICK_TIMING
from benchmarks.backends.registry import BACKENDS, PRECISIONS, parse_batch_sizes, parse_list
from benchmarks.report.files import read_report
from benchmarks.report.summary import exit_code


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m benchmarks', description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument('--backends', help=f'comma list from {",".join(BACKENDS)} (default: all)')
    parser.add_argument('--precisions', help=f'comma list from {",".join(PRECISIONS)} (default: fp32,bf16,int8)')
    parser.add_argument('--batch-sizes', help='comma list of batch sizes (default: 1,32)')
    parser.add_argument('--images', help='folder of photographs for parity and timing (default: the sample '
                                         'photographs)')
    parser.add_argument('--data', help='ImageFolder (class/image.jpg) of labelled photographs: accuracy per row')
    parser.add_argument('--onnx-dir', help='keep the ONNX graphs here: graphs export.onnx already wrote here for '
                                           'this model are reused, missing ones are exported here (default: a '
                                           'temporary folder)')
    parser.add_argument('--threads', type=positive(int, 1024), help='compute threads for every backend (default: usable cores)')
    parser.add_argument('--quick', action='store_true', help='under a minute: torch, onnxruntime, openvino, '
                                                              'tensorrt; fp32, int8; batch 1; short timing')
    parser.add_argument('--rounds', type=bounded(int, 1, 1000), help='timing rounds, each visiting every row once (default: '
                                                   f'{DEFAULT_TIMING.rounds}; --quick: {QUICK_TIMING.rounds}); more '
                                                   'rounds, tighter intervals')
    parser.add_argument('--seconds-per-row', type=positive(float, 60), help='timed seconds per row and round (default: '
                                                              f'{DEFAULT_TIMING.seconds_per_row}; --quick: '
                                                              f'{QUICK_TIMING.seconds_per_row})')
    parser.add_argument('--seed', type=seed(), help='seed of the rounds\' shuffled order (default: 0)')
    parser.add_argument('--run-to-run', type=bounded(float, 0, 1), help='relative standard deviation between runs that one run\'s '
                                                         f'rounds cannot see, added to every interval (default: '
                                                         f'{DEFAULT_TIMING.run_to_run}, measured on 2-core shared '
                                                         'machines; 0 on a dedicated one)')
    parser.add_argument('--compare', help='an earlier report.json to put beside this one: changes named only '
                                          'where the 95 %% intervals do not overlap')
    parser.add_argument('--output-dir', required=True, help='where report.json/.md/.csv and the plots go')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    # Usage first (exit 2, no work done), then the inputs that need reading.
    for text, known, what in ((args.backends, BACKENDS, 'backend'), (args.precisions, PRECISIONS, 'precision')):
        if text is not None:
            parse_list(text, known, what)
    if args.batch_sizes is not None:
        parse_batch_sizes(args.batch_sizes)
    timing = timing_config(args.quick, args.rounds, args.seconds_per_row, args.seed, args.run_to_run)
    images = folder_images(args.images) if args.images else None
    if args.compare:
        read_report(args.compare)  # a report that cannot be compared is refused before the model is made
    loaded = load_model(args.model, args.checkpoint, args.num_classes, args.pretrained)
    report = run_benchmark(
        loaded, args.output_dir, backends=args.backends, precisions=args.precisions, batch_sizes=args.batch_sizes,
        images=images, **({'images_source': f'images from {args.images}'} if args.images else {}), data=args.data,
        calibration_images=args.images, onnx_dir=args.onnx_dir, threads=args.threads,
        quick=args.quick, compare=args.compare, timing=timing, progress=not args.no_progress,
        command=' '.join(['python -m benchmarks'] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]))
    print(f'wrote {args.output_dir}/report.md ({len(report.results)} rows, {len(report.skipped)} skipped)')
    return exit_code(report)


if __name__ == '__main__':
    run_cli(main)
