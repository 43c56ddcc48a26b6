"""``python -m export.triton``: a Triton Inference Server model repository from the exported graphs and engines.

    python -m export.triton --onnx-dir OUT --repository REPO [--backends onnxruntime,openvino,tensorrt]
        [--precisions fp32,fp16,int8] [--max-batch 32] [--preferred-batch 8,16,32] [--max-queue-delay-us 500]
        [--instances N] [--engines DIR] [--kserve [--storage-uri URI] [--kserve-cpus N]] [--check]

One model per backend and precision, ``REPO/<model>_<backend>_<precision>/``: ``config.pbtxt``, ``labels.txt`` and
``1/model.onnx`` (ONNX Runtime, OpenVINO) or ``1/model.plan`` (TensorRT, only from an engine ``export.trt`` built;
otherwise listed as skipped with the reason). Each config is a ``ModelConfig`` message of Triton's own schema
(``tritonclient``'s ``model_config_pb2``) written in protobuf's text format: names, dims and data types come from
the graph, the preprocessing from its metadata, the labels from its ``label_names``. The graphs are checked
against the folder's ``export.json`` first; the repository is written as one set (``alexnet_zoo.manifest``).
"""
import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import onnx

from alexnet_zoo.cli import (MAX_BATCH, ArgumentParser, UsageError, bounded, parse_list, parse_sizes, positive,
                             printable, run_cli)
from alexnet_zoo.files import PathLike
from alexnet_zoo.manifest import MANIFEST, read_manifest, save_set, verify

from export.contract import FILENAMES, GRAPH_PRECISIONS, dims, graph_inputs, input_chw, metadata, read_onnx
from export.export_manifest import exported_graphs
from export.triton.kserve import KServe, Served, manifest_text
from export.trt.record import read_record

KIND = 'triton repository'
MODEL_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*$')  # a folder name Triton accepts and no path can escape
LABELS = 'labels.txt'
KSERVE_FILE = 'kserve.yaml'  # a file, not a folder: Triton reads only a repository's folders
PREPROCESSING = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'input_layout')


class TritonBackend(NamedTuple):
    """How Triton runs one of our artifacts: which config field names it, the model file, where instances run."""
    field: str  # 'platform' or 'backend'
    value: str
    filename: str
    kind: str  # instance_group kind
    name_the_file: bool = False  # default_model_filename (the OpenVINO backend reads ONNX when told the file)


# The one table of Triton backends; TensorRT engines run on a GPU only.
BACKENDS = {'onnxruntime': TritonBackend('platform', 'onnxruntime_onnx', 'model.onnx', 'KIND_CPU'),
            'openvino': TritonBackend('backend', 'openvino', 'model.onnx', 'KIND_CPU', name_the_file=True),
            'tensorrt': TritonBackend('platform', 'tensorrt_plan', 'model.plan', 'KIND_GPU')}
# ONNX element type -> Triton data type (the ones an exported graph can have at its inputs and outputs)
TRITON_TYPES = {onnx.TensorProto.FLOAT: 'TYPE_FP32', onnx.TensorProto.FLOAT16: 'TYPE_FP16',
                onnx.TensorProto.BFLOAT16: 'TYPE_BF16', onnx.TensorProto.INT64: 'TYPE_INT64',
                onnx.TensorProto.INT32: 'TYPE_INT32', onnx.TensorProto.INT8: 'TYPE_INT8',
                onnx.TensorProto.UINT8: 'TYPE_UINT8', onnx.TensorProto.BOOL: 'TYPE_BOOL'}


@dataclass
class Batching:
    max_batch: int = 32
    preferred: Tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 500
    instances: int = 1


@dataclass
class Repository:
    path: Path
    models: Dict[str, dict] = field(default_factory=dict)  # model name -> backend, precision, files, max batch
    skipped: List[dict] = field(default_factory=list)  # backend, precision, reason


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    """Triton's dynamic batching as the commands that configure it (export.triton.repository, benchmarks.serve.benchmark) spell it."""
    parser.add_argument('--max-batch', type=positive(int, MAX_BATCH), default=Batching.max_batch,
                        help=f'max_batch_size (default {Batching.max_batch})')
    preferred = ','.join(map(str, Batching.preferred))
    parser.add_argument('--preferred-batch', default=preferred,
                        help=f'dynamic batching\'s preferred batch sizes (default {preferred})')
    parser.add_argument('--max-queue-delay-us', type=bounded(int, 0, 10_000_000), default=Batching.max_queue_delay_us,
                        help=f'how long a request may wait for others to batch with (default '
                             f'{Batching.max_queue_delay_us} µs)')


def batching_from(args: argparse.Namespace, instances: int = 1) -> Batching:
    """The ``Batching`` of ``add_batching_arguments``'s options, the preferred sizes checked against the max."""
    preferred = parse_sizes(args.preferred_batch, '--preferred-batch size', args.max_batch,
                            f'--max-batch ({args.max_batch})')
    return Batching(args.max_batch, preferred, args.max_queue_delay_us, instances)


def model_config(name: str, backend: str, graph: onnx.ModelProto, batching: Batching, labels: bool,
                 max_batch: Optional[int] = None):
    """Triton's ``ModelConfig`` for ``graph`` served by ``backend``: every input and output as the graph declares
    it (the batch dimension left to ``max_batch_size``), dynamic batching, instances, preprocessing parameters."""
    from tritonclient.grpc import model_config_pb2 as mc
    how = BACKENDS[backend]
    config = mc.ModelConfig(name=name, max_batch_size=max_batch or batching.max_batch)
    setattr(config, how.field, how.value)
    if how.name_the_file:
        config.default_model_filename = how.filename
    for value_info, tensors in [(i, config.input) for i in graph_inputs(graph)] + \
                               [(o, config.output) for o in graph.graph.output]:
        shape = dims(value_info)
        if not shape or isinstance(shape[0], int) or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ValueError(f'{value_info.name} has shape {shape}: Triton batching needs a dynamic batch '
                             f'dimension followed by static ones')
        elem = value_info.type.tensor_type.elem_type
        if elem not in TRITON_TYPES:
            raise ValueError(f'{value_info.name} is {onnx.TensorProto.DataType.Name(elem)}, which Triton does not serve')
        tensor = tensors.add(name=value_info.name, data_type=mc.DataType.Value(TRITON_TYPES[elem]), dims=shape[1:])
        if tensors is config.output and labels and value_info.name == 'logits':
            tensor.label_filename = LABELS  # Triton's classification extension answers with class names
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(how.kind))
    set_batching(config, batching)
    meta = metadata(graph)
    for key in PREPROCESSING:
        if key in meta:
            config.parameters[key].string_value = json.dumps(meta[key]) if not isinstance(meta[key], str) \
                else meta[key]
    return config


def set_batching(config, batching: Batching) -> None:
    """Dynamic batching (the preferred sizes up to the config's max batch, the queue delay) and the instance count
    of every instance group, in a ``ModelConfig``."""
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(b for b in batching.preferred if b <= config.max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    for group in config.instance_group:
        group.count = batching.instances


def config_text(config) -> str:
    from google.protobuf import text_format
    return text_format.MessageToString(config)


def parse_config(text: str):
    """A ``config.pbtxt`` parsed with Triton's schema (what the tests and a deployer's CI can run)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    return text_format.Parse(text, mc.ModelConfig())


def write_repository(onnx_dir: PathLike, repository: PathLike, backends: Sequence[str] = tuple(BACKENDS),
                     precisions: Sequence[str] = GRAPH_PRECISIONS, batching: Batching = Batching(),
                     engines: Optional[PathLike] = None, kserve: Optional[KServe] = None) -> Repository:
    """The repository of ``backends`` × ``precisions`` (with ``kserve``, also its ``kserve.yaml``), written as
    one set."""
    onnx_dir, repository = Path(onnx_dir), Path(repository)
    if not onnx_dir.is_dir():
        raise FileNotFoundError(f'--onnx-dir not found: {onnx_dir}')
    _check_target(repository)
    graphs, listed = exported_graphs(onnx_dir, precisions)  # the graphs export.json vouches for, of one weights
    if not graphs:
        raise FileNotFoundError(f'no exported graph of {", ".join(precisions)} in {onnx_dir} (python -m export.onnx '
                                f'writes them)')
    result = Repository(repository)
    parsed = {p: read_onnx(path) for p, path in graphs.items()}
    meta = metadata(next(iter(parsed.values())))
    labels = meta.get('label_names')
    if not MODEL_NAME.match(str(meta.get('model_name', 'model'))):
        raise ValueError(f'the graphs\' model_name {str(meta.get("model_name"))[:40]!r} cannot name a Triton model '
                         f'(letters, digits, _ . - only)')
    if labels is not None and (not isinstance(labels, list) or not all(
            isinstance(label, str) and label and label.isprintable() for label in labels)):
        raise ValueError('the graphs\' label_names are not one printable line each: labels.txt cannot hold them')
    files, served = _model_files(result, onnx_dir, graphs, listed, parsed, meta, backends, precisions, batching, engines)
    if not result.models:
        raise ValueError('nothing to serve: ' + '; '.join(f'{s["backend"]} {s["precision"]}: {s["reason"]}'
                                                           for s in result.skipped))
    files['README.md'] = ('text', readme(result, meta, kserve is not None))
    if kserve is not None:
        files[KSERVE_FILE] = ('text', manifest_text(str(meta.get('model_name', 'model')), served, kserve))
    old = set((read_manifest(repository) or {}).get('files', {})) if repository.is_dir() else set()
    # staged beside the repository: Triton takes every subfolder for a model, a half-written one included
    save_set(repository, lambda staging: _write_files(staging, files),
             {'kind': KIND, 'models': result.models, 'skipped': result.skipped}, outside=True)
    for stale in {relative.split('/')[0] for relative in old - set(files)} - set(result.models) - {'README.md'}:
        if stale == KSERVE_FILE and (repository / stale).is_file():  # an earlier run's manifest, not this one's
            (repository / stale).unlink()
        elif MODEL_NAME.match(stale) and (repository / stale).is_dir():  # only a model folder inside the repository
            shutil.rmtree(repository / stale, ignore_errors=True)  # of an earlier run, not in this one
    return result


def _model_files(result, onnx_dir, graphs, listed, parsed, meta, backends, precisions, batching, engines):
    """(files, served) of each backend × precision that can be served; one that cannot goes into ``result.skipped``
    with the reason, so that the user learns why a model is missing rather than finding it absent."""
    files, served = {}, {}  # relative path -> ('copy', source) or ('text', content); model -> Served, for kserve.yaml
    labels = meta.get('label_names')
    for backend in backends:
        for precision in precisions:
            where = {'backend': backend, 'precision': precision}
            if precision not in graphs:
                result.skipped.append({**where, 'reason': f'no {FILENAMES[precision]} in {onnx_dir}'})
                continue
            name = f'{meta.get("model_name", "model")}_{backend}_{precision}'
            source, max_batch = graphs[precision], None
            if backend == 'tensorrt':
                source, max_batch, reason = _engine(engines, precision, graphs[precision],
                                                    listed['files'][graphs[precision].name]['sha256'],
                                                    input_chw(parsed[precision])[1])
                if reason:
                    result.skipped.append({**where, 'reason': reason})
                    continue
            config = model_config(name, backend, parsed[precision], batching, bool(labels),
                                  min(batching.max_batch, max_batch) if max_batch else None)
            files[f'{name}/config.pbtxt'] = ('text', config_text(config))
            files[f'{name}/1/{BACKENDS[backend].filename}'] = ('copy', source)
            if labels:
                files[f'{name}/{LABELS}'] = ('text', ''.join(f'{label}\n' for label in labels))
            result.models[name] = {**where, 'max_batch_size': config.max_batch_size, 'source': source.name}
            served[name] = Served(source, backend, config.max_batch_size, list(config.input[0].dims))
    return files, served


def update_batching(repository: PathLike, backend: str, precision: str, batching: Batching) -> List[str]:
    """Set ``batching`` in the ``config.pbtxt`` of each ``backend`` ``precision`` model of a repository this command
    wrote (the settings sweep's choice), saved as one set with every other file unchanged; returns the models
    changed. A TensorRT model keeps its engine's max batch where the new one is larger."""
    repository = Path(repository)
    manifest = verify(repository)
    if not manifest or manifest.get('kind') != KIND:
        raise ValueError(f'{repository} is not a repository written by export.triton.repository')
    names = [n for n, m in manifest['models'].items() if (m['backend'], m['precision']) == (backend, precision)]
    if not names:
        raise ValueError(f'{repository} has no {backend} {precision} model to configure')
    changed = {}
    for name in names:
        config = parse_config((repository / name / 'config.pbtxt').read_text())
        cap = config.max_batch_size if backend == 'tensorrt' else MAX_BATCH
        config.max_batch_size = min(batching.max_batch, cap)
        set_batching(config, batching)
        changed[f'{name}/config.pbtxt'] = config_text(config)
        manifest['models'][name]['max_batch_size'] = config.max_batch_size

    def write(staging: Path) -> None:
        for relative, text in changed.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text)

    save_set(repository, write, {k: v for k, v in manifest.items() if k != 'files'},
             keep=[f for f in manifest['files'] if f not in changed], outside=True)
    return names


def _write_files(staging: Path, files: Dict[str, Tuple[str, object]]) -> None:
    """A set's files, a graph linked rather than copied where the disk allows: a model file costs no space twice."""
    for relative, (how, content) in files.items():
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == 'copy':
            try:
                os.link(content, target)  # the same bytes without a copy: export.onnx replaces, never rewrites
            except OSError:
                shutil.copyfile(content, target)
        else:
            target.write_text(content)


def _check_target(repository: Path) -> None:
    """An empty folder, or a repository this command wrote: never mix models into someone else's repository."""
    if repository.exists() and not repository.is_dir():
        raise NotADirectoryError(f'--repository is not a folder: {repository}')
    if repository.is_dir() and any(p for p in repository.iterdir() if not p.name.startswith('.')):
        manifest = read_manifest(repository)
        if not manifest or manifest.get('kind') != KIND:
            raise ValueError(f'{repository} is not empty and was not written by export.triton.repository (no {MANIFEST} of a '
                             f'{KIND}); choose an empty folder')


def _engine(engines: Optional[PathLike], precision: str, graph: Path, graph_sha256: str,
            graph_chw: Sequence[int]) -> Tuple[Optional[Path], Optional[int], str]:
    """The TensorRT engine ``export.trt`` built from ``graph`` (whose hash export.json gave and the file matched,
    and whose input is ``graph_chw`` after the batch), with its largest batch; or why there is none."""
    build = f'python -m export.trt --onnx {graph} (on a machine with an NVIDIA GPU)'
    if engines is None:
        return None, None, f'no --engines folder: build model.{precision}.plan with {build}'
    plan = Path(engines) / f'model.{precision}.plan'
    if not plan.is_file():
        return None, None, f'no {plan}: build it with {build}'
    record = read_record(plan)  # the engine is the one its build record describes
    try:
        built_from = record.get('onnx', {}).get('sha256')
        low, high = int(record['input']['min'][0]), int(record['input']['max'][0])
        shapes = {list(record['input'][key][1:]) == list(graph_chw) for key in ('min', 'opt', 'max')}
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None, None, f'{plan.name}.json does not say which graph and batch sizes it was built for; rebuild it'
    if built_from != graph_sha256:
        return None, None, f'{plan} was built from another graph than {graph}; rebuild it with {build}'
    if shapes != {True}:  # a record that names the graph's hash must also name its input size
        return None, None, f'{plan.name}.json says the engine takes {_shape(record["input"])}, but {graph.name} ' \
                           f'takes [batch, {", ".join(map(str, graph_chw))}]; rebuild it with {build}'
    if low != 1 or high < 1:
        return None, None, f'{plan} takes batches of {low} to {high}; Triton sends any size from 1: rebuild it ' \
                           f'with --min-batch 1'
    return plan, high, ''


def _shape(profile: dict) -> str:
    """An engine profile's input shapes in a message: the min, opt and max batch over the per-image dims."""
    return ' / '.join(str(list(profile[key])) for key in ('min', 'opt', 'max'))


def readme(result: Repository, meta: dict, kserve_file: bool = False) -> str:
    """How to serve the repository with the official container and query it."""
    first = next(iter(result.models))
    size = meta.get('input_size', [3, 224, 224])
    lines = [f'# Triton model repository: {meta.get("model_name", "model")}', '',
             'Written by `python -m export.triton` from graphs checked against their `export.json`. One model per '
             'backend and precision:', '', '| model | backend | precision | max batch |', '| --- | --- | --- | --- |']
    lines += [f'| `{name}` | {m["backend"]} | {m["precision"]} | {m["max_batch_size"]} |'
              for name, m in result.models.items()]
    if result.skipped:
        lines += ['', 'Not written:', ''] + [f'- {s["backend"]} {s["precision"]}: {s["reason"]}' for s in result.skipped]
    if kserve_file:
        lines += ['', f'`{KSERVE_FILE}` is a KServe `InferenceService` for this repository: `kubectl apply -f {KSERVE_FILE}` '
                  'once the repository is at its `storageUri` (docs/serving.md, "Past one machine").']
    lines += ['', '## Serve', '', 'With the official container (GPU models need `--gpus all`; CPU models run without):',
              '', '```bash',
              'docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\',
              '    nvcr.io/nvidia/tritonserver:25.01-py3 tritonserver --model-repository=/models',
              '```', '', 'HTTP on 8000, gRPC on 8001, Prometheus metrics on 8002 (`curl localhost:8002/metrics`).', '',
              '## Query', '', f'Inputs are preprocessed images: float32, NCHW, {size[1]}x{size[2]}, normalized with the '
              'mean and std in each `config.pbtxt`\'s parameters (timm\'s eval transform: resize, centre crop by '
              '`crop_pct`).', '', '```python', 'import numpy as np', 'import tritonclient.http as http', '',
              'client = http.InferenceServerClient("localhost:8000")',
              f'x = np.zeros((1, {size[0]}, {size[1]}, {size[2]}), np.float32)  # your preprocessed batch',
              'request = http.InferInput("input", list(x.shape), "FP32")', 'request.set_data_from_numpy(x)',
              'top5 = http.InferRequestedOutput("logits", class_count=5)  # Triton\'s classification extension',
              f'answer = client.infer("{first}", [request], outputs=[top5])',
              'print(answer.as_numpy("logits"))  # b"score:index:label" for each of the 5 best classes', '```', '']
    return '\n'.join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m export.triton', description=__doc__.split('\n\n')[0].strip('`: '),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--onnx-dir', required=True, help='graphs written by export.onnx (with their export.json)')
    parser.add_argument('--repository', required=True, help='the model repository to write (empty, or one written '
                                                             'by this command)')
    parser.add_argument('--backends', default=','.join(BACKENDS), help=f'comma list of {",".join(BACKENDS)}')
    parser.add_argument('--precisions', default=','.join(GRAPH_PRECISIONS),
                        help=f'comma list of {",".join(GRAPH_PRECISIONS)}')
    add_batching_arguments(parser)
    parser.add_argument('--instances', type=positive(int, 64), default=1, help='model instances (default 1)')
    parser.add_argument('--engines', help='folder of TensorRT engines built by export.trt (model.<precision>.plan)')
    parser.add_argument('--kserve', action='store_true', help=f'also write {KSERVE_FILE}, a KServe InferenceService '
                                                               'for the repository (footprint measured here)')
    parser.add_argument('--storage-uri', help='where the repository will be, for --kserve (s3://..., gs://..., '
                                              'pvc://...; default: a placeholder to replace)')
    parser.add_argument('--kserve-cpus', type=positive(int, 1024), default=2, help='cores to request (default 2)')
    parser.add_argument('--check', action='store_true',
                        help='then load the repository with Triton\'s own server (PyTriton\'s binary): exit 1 if Triton '
                             'refuses anything but the backend libraries it lacks (export/triton/check.py)')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    backends = parse_list(args.backends, tuple(BACKENDS), 'backend')
    precisions = parse_list(args.precisions, GRAPH_PRECISIONS, 'precision')
    if args.storage_uri is not None and not args.kserve:
        raise UsageError('--storage-uri is for --kserve')
    if args.storage_uri is not None and not re.match(r'^[a-z][a-z0-9+.-]*://\S+$', args.storage_uri):
        raise UsageError(f'--storage-uri {printable(args.storage_uri)[:60]!r} is not a URI (s3://bucket/path, ...)')
    result = write_repository(args.onnx_dir, args.repository, backends, precisions,
                              batching_from(args, args.instances), args.engines,
                              KServe(args.storage_uri, args.kserve_cpus) if args.kserve else None)
    for name, model in result.models.items():
        print(f'{name}: {model["backend"]} {model["precision"]}, max batch {model["max_batch_size"]}')
    for skipped in result.skipped:
        print(f'skipped {skipped["backend"]} {skipped["precision"]}: {skipped["reason"]}', file=sys.stderr)
    print(f'wrote {result.path} ({len(result.models)} models); serve it as {result.path}/README.md says')
    return check(result) if args.check else 0


def check(result: Repository) -> int:
    """Triton's own verdict on the written repository, printed; 1 when it refused anything but a backend."""
    from export.triton.check import check_repository
    # our backend names are the backend libraries Triton looks for (platform tensorrt_plan loads 'tensorrt')
    verdict = check_repository(result.path, {name: m['backend'] for name, m in result.models.items()})
    for name in result.models:
        print(f'triton {name}: {verdict.models.get(name, "not tried")}')
    for problem in verdict.problems:
        print(f'triton refused: {problem}', file=sys.stderr)
    print(f'Triton\'s check: {"every config accepted" if verdict.passed else f"{len(verdict.problems)} problem(s)"}')
    return 0 if verdict.passed else 1


if __name__ == '__main__':
    run_cli(main)
