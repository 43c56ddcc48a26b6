"""A benchmark run's checked inputs (``RunInputs``, what every step of ``harness.run_benchmark`` reads), and
the report they begin: the sections that describe those inputs, then what the run measured, as a typed ``Report``.
"""
import dataclasses
from datetime import datetime, timezone
from typing import List, Optional, Tuple

import numpy as np
import torch

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.files import PathLike
from alexnet_zoo.stats import flops_per_image
from export import parity

from benchmarks.measure.environment import environment
from benchmarks.measure.latency import TimingConfig, timing_dict
from benchmarks.report.schema import SCHEMA_VERSION, Report, typed
from benchmarks.measure.uncertainty import median_ci_rank


@dataclasses.dataclass
class RunInputs:
    """One run's inputs once checked, which every step reads: a step takes this one argument, not a dozen."""
    loaded: LoadedModel
    model: torch.nn.Module
    names: List[str]
    x: np.ndarray
    labelled: Optional[Tuple[np.ndarray, np.ndarray, List[str], int]]
    backends: List[str]
    precisions: List[str]
    batch_sizes: List[int]
    timing: TimingConfig
    threads: int
    quick: bool
    images_source: str
    image_count: int
    data: Optional[PathLike]
    onnx_dir: Optional[PathLike]
    calibration_images: Optional[PathLike]


def make_report(run: RunInputs, command: Optional[str], references, activations: dict, stages: List[dict],
                graphs_section: dict, measured: dict) -> Report:
    """The report before its summary: the inputs' sections, then what the run measured (``measured``: its typed
    rows, what was skipped, the timing rounds, the ceilings, the per-layer profiles), checked by the schema;
    ``references`` are the run's ``harness.References``."""
    labelled = run.labelled
    return typed(Report, {
        'schema_version': SCHEMA_VERSION,
        'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'command': command,
        'environment': environment(run.threads),
        'model': {'name': run.loaded.name, 'num_classes': run.loaded.num_classes, 'source': run.loaded.source,
                  'trained': run.loaded.trained, 'gates_judged': run.loaded.trained,
                  'margin_std': parity.margin_std(references.fp32), 'flops_per_image': flops_per_image(run.model),
                  'parameters': sum(p.numel() for p in run.model.parameters()),
                  **activations, 'stages': stages},
        'images': {'source': run.images_source, 'count': run.image_count, 'views': len(run.x), 'names': run.names},
        'graphs': graphs_section,
        'data': None if labelled is None else {
            'path': str(run.data), 'count': labelled[3], 'views': int(len(labelled[1])), 'classes': labelled[2],
            'reference_accuracy': references.accuracy},
        'settings': {'backends': list(run.backends), 'precisions': list(run.precisions),
                     'batch_sizes': list(run.batch_sizes), 'quick': run.quick,
                     'timing': {**timing_dict(run.timing),
                                'interval_coverage': round(median_ci_rank(run.timing.rounds)[1], 4)},
                     'gates': parity.GATES,
                     'accuracy_min_ratio': parity.ACCURACY_MIN_RATIO},
        **measured,
    })
