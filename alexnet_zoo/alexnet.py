"""AlexNet

Three variants of the network that started deep learning for vision, as timm models:

* ``alexnet``: torchvision's layout (64-192-384-256-256, adaptive 6x6 pool, 224x224 input), so that
  torchvision's published ImageNet weights load unchanged in meaning.
* ``alexnet_bn``: the "modern" AlexNet of the design card: the 2012 widths (96-256-384-384-256), 227x227
  input, BatchNorm after every block and after every hidden fully connected layer.
* ``alexnet_lrn``: the 2012 paper's network, with local response normalization and the two-GPU split
  expressed as grouped convolutions.

Papers:
* `ImageNet Classification with Deep Convolutional Neural Networks` - Krizhevsky, Sutskever, Hinton, NIPS 2012
* `One weird trick for parallelizing convolutional neural networks` - https://arxiv.org/abs/1404.5997
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ['AlexNet', 'AlexNetCfg', 'ConvCfg']


def paper_lrn(num_features: int, **kwargs: Any) -> nn.LocalResponseNorm:
    """The 2012 paper's response normalization: b = a / (k + alpha * sum(a^2 over n maps)) ** beta, n = 5,
    alpha = 1e-4, beta = 0.75, k = 2. torch's LocalResponseNorm divides alpha by n, so it is given alpha * n.
    Built like any norm layer (from the channel count, which it does not need)."""
    size = 5
    return nn.LocalResponseNorm(size, alpha=1e-4 * size, beta=0.75, k=2.0)


@dataclass(frozen=True)
class ConvCfg:
    """One conv block: conv -> ReLU [-> norm if norm_before_pool] [-> max-pool 3x3/2] [-> norm]."""
    out_chs: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    pool: bool = False
    norm_layer: Optional[Callable[..., nn.Module]] = None  # a type (nn.BatchNorm2d) or a factory (paper_lrn)
    norm_before_pool: bool = False  # the paper's LRN comes before the pool, alexnet_bn's BatchNorm after it


@dataclass(frozen=True)
class AlexNetCfg:
    blocks: Tuple[ConvCfg, ...]
    hidden: Tuple[int, ...]  # widths of the hidden fully connected layers (the pre-logits)
    head_norm_layer: Optional[Callable[..., nn.Module]] = None  # after each hidden FC layer (fc -> ReLU -> Dropout -> norm)
    global_pool: str = 'avg'
    drop_rate: float = 0.5


def _bn_block(out_chs: int, kernel_size: int, stride: int = 1, padding: int = 0, pool: bool = False) -> ConvCfg:
    return ConvCfg(out_chs, kernel_size, stride, padding, pool=pool, norm_layer=nn.BatchNorm2d)


model_cfgs: Dict[str, AlexNetCfg] = {
    'alexnet': AlexNetCfg(
        blocks=(
            ConvCfg(64, 11, 4, 2, pool=True),
            ConvCfg(192, 5, 1, 2, pool=True),
            ConvCfg(384, 3, 1, 1),
            ConvCfg(256, 3, 1, 1),
            ConvCfg(256, 3, 1, 1, pool=True),
        ),
        hidden=(4096, 4096), global_pool='avg', drop_rate=0.5,
    ),
    'alexnet_bn': AlexNetCfg(
        # the design card's "VALID" padding for conv 2 and 3 contradicts its own output shapes; the shapes win
        blocks=(
            _bn_block(96, 11, 4, 0, pool=True),
            _bn_block(256, 5, 1, 2, pool=True),
            _bn_block(384, 3, 1, 1),
            _bn_block(384, 3, 1, 1),
            _bn_block(256, 3, 1, 1, pool=True),
        ),
        hidden=(4096, 4096, 1000), head_norm_layer=nn.BatchNorm1d, global_pool='flatten', drop_rate=0.4,
    ),
    'alexnet_lrn': AlexNetCfg(
        # groups=2 is the paper's two-GPU split: conv 2, 4 and 5 see only the kernel maps on their own GPU
        blocks=(
            ConvCfg(96, 11, 4, 0, pool=True, norm_layer=paper_lrn, norm_before_pool=True),
            ConvCfg(256, 5, 1, 2, groups=2, pool=True, norm_layer=paper_lrn, norm_before_pool=True),
            ConvCfg(384, 3, 1, 1),
            ConvCfg(384, 3, 1, 1, groups=2),
            ConvCfg(256, 3, 1, 1, groups=2, pool=True),
        ),
        hidden=(4096, 4096), global_pool='flatten', drop_rate=0.5,
    ),
}

POOL_TYPES = ('', 'flatten', 'avg', 'max')


class AlexNetHead(nn.Module):
    """Pool to the 6x6 grid, the hidden fully connected layers (pre-logits), then the classifier.

    pool_type: 'avg' / 'max' adapt any feature size to the 6x6 grid the first FC layer expects (torchvision's
    AdaptiveAvgPool2d), 'flatten' takes the features as they are (fixed input size), '' passes the unpooled
    feature map through untouched, as timm's heads do for ``global_pool=''``.
    """

    def __init__(self, in_chs: int, hidden: Tuple[int, ...], num_classes: int, pool_type: str = 'avg',
                 drop_rate: float = 0.5, norm_layer: Optional[Callable[..., nn.Module]] = None,
                 feat_size: Tuple[int, int] = (6, 6), device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.feat_size = feat_size
        self.pool_type = ''
        self.global_pool: nn.Module = nn.Identity()
        self._set_pool(pool_type)
        self.flatten = nn.Flatten(1)

        layers: List[Tuple[str, nn.Module]] = []
        prev = in_chs * feat_size[0] * feat_size[1]
        for i, width in enumerate(hidden, start=1):
            if norm_layer is not None:
                # alexnet_bn: fc -> ReLU -> Dropout -> BatchNorm, as the design card's layer table lists it
                layers += [
                    (f'fc{i}', nn.Linear(prev, width, **dd)),
                    (f'act{i}', nn.ReLU(inplace=True)),
                    (f'drop{i}', nn.Dropout(drop_rate)),
                    (f'norm{i}', norm_layer(width, **dd)),
                ]
            else:
                # torchvision / paper order: Dropout -> fc -> ReLU
                layers += [
                    (f'drop{i}', nn.Dropout(drop_rate)),
                    (f'fc{i}', nn.Linear(prev, width, **dd)),
                    (f'act{i}', nn.ReLU(inplace=True)),
                ]
            prev = width
        self.pre_logits = nn.Sequential(OrderedDict(layers))
        self.num_features = prev
        self.fc: nn.Module = nn.Linear(prev, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def _set_pool(self, pool_type: str) -> None:
        if pool_type not in POOL_TYPES:
            raise ValueError(f'global_pool must be one of {POOL_TYPES}, got {pool_type!r}')
        self.pool_type = pool_type
        if pool_type == 'avg':
            self.global_pool = nn.AdaptiveAvgPool2d(self.feat_size)
        elif pool_type == 'max':
            self.global_pool = nn.AdaptiveMaxPool2d(self.feat_size)
        else:
            self.global_pool = nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device=None, dtype=None) -> None:
        if pool_type is not None:
            self._set_pool(pool_type)
        self.fc = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) \
            if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == '':
            return x
        x = self.flatten(self.global_pool(x))
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)


class AlexNet(nn.Module):
    """AlexNet family: five conv blocks (``features``), then pooling, hidden FC layers and classifier (``head``).

    ``features`` is one flat ``nn.Sequential`` so that torchvision's ``features.N`` keys map one to one and timm's
    ``features_only`` can tap the end of any block.
    """

    def __init__(self, cfg: AlexNetCfg, num_classes: int = 1000, in_chans: int = 3, global_pool: Optional[str] = None,
                 drop_rate: Optional[float] = None, img_size: Optional[Union[int, Tuple[int, int]]] = None,
                 device=None, dtype=None) -> None:
        """global_pool, drop_rate: None takes the cfg's. img_size: with global_pool='flatten', the input size the
        first FC layer is sized for (227 -> 6x6 grid)."""
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        global_pool = cfg.global_pool if global_pool is None else global_pool
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = cfg.drop_rate if drop_rate is None else drop_rate
        self.grad_checkpointing = False
        self.feature_info: List[Dict[str, Any]] = []
        self.feature_ends: List[int] = []  # index into self.features of each feature_info tap

        layers: List[nn.Module] = []
        prev_chs, stride = in_chans, 1
        for block in cfg.blocks:
            layers += [
                nn.Conv2d(prev_chs, block.out_chs, block.kernel_size, block.stride, block.padding,
                          groups=block.groups, **dd),
                nn.ReLU(inplace=True),
            ]
            stride *= block.stride
            norm = [block.norm_layer(block.out_chs, **dd)] if block.norm_layer is not None else []
            if block.norm_before_pool:
                layers += norm
            if block.pool:
                layers += [nn.MaxPool2d(kernel_size=3, stride=2)]
                stride *= 2
            if not block.norm_before_pool:
                layers += norm
            prev_chs = block.out_chs
            self.feature_ends.append(len(layers) - 1)
            self.feature_info.append(dict(num_chs=prev_chs, reduction=stride, module=f'features.{len(layers) - 1}'))
        self.features = nn.Sequential(*layers)
        self.num_features = prev_chs

        feat_size = (6, 6)
        if img_size is not None and global_pool in ('flatten', ''):
            feat_size = _feature_grid(cfg.blocks, img_size)
        self.head = AlexNetHead(
            prev_chs, cfg.hidden, num_classes, pool_type=global_pool, drop_rate=self.drop_rate,
            norm_layer=cfg.head_norm_layer, feat_size=feat_size, **dd)
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^features\.0', blocks=r'^features\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features and the output of each conv block (indices 0-4; block 4's is the forward_features output).

        norm: unused, AlexNet has no final norm layer.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = _feature_indices(len(self.feature_ends), indices)
        last_idx = len(self.feature_ends) - 1
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            layers = self.features
        else:
            layers = self.features[:self.feature_ends[max_index] + 1]
        feat_idx = 0
        for i, layer in enumerate(layers):
            x = layer(x)
            if i == self.feature_ends[feat_idx]:
                if feat_idx in take_indices:
                    intermediates.append(x)
                feat_idx = min(feat_idx + 1, last_idx)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last wanted intermediate, and the head (it is sized for the full network)."""
        take_indices, max_index = _feature_indices(len(self.feature_ends), indices)
        self.features = self.features[:self.feature_ends[max_index] + 1]
        if max_index < len(self.feature_ends) - 1:
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < len(self.feature_ends) - 1:
            self.head.reset(0, '')
            self.head.pre_logits = nn.Sequential()
            self.head.num_features = self.head_hidden_size = self.num_features
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_features(x)
        return self.features(x)

    @torch.jit.ignore
    def _checkpointed_features(self, x: torch.Tensor) -> torch.Tensor:
        """One checkpoint per block, not per layer (timm's checkpoint_seq): a layer's saved input would be what the
        in-place ReLU after a conv overwrites; a block starts with a conv and leaves its input alone."""
        ends = [e + 1 for e in self.feature_ends if e < len(self.features)] + [len(self.features)]
        for start, end in zip([0, *ends], ends):
            if end > start:
                x = checkpoint(self.features[start:end], x, use_reentrant=False)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _feature_grid(blocks: Tuple[ConvCfg, ...], img_size) -> Tuple[int, int]:
    """Spatial size of the last block's output for an input of img_size."""
    size = list(img_size[-2:]) if isinstance(img_size, (tuple, list)) else [img_size, img_size]
    for b in blocks:
        size = [(s + 2 * b.padding - b.kernel_size) // b.stride + 1 for s in size]
        if b.pool:
            size = [(s - 3) // 2 + 1 for s in size]
    if min(size) < 1:
        raise ValueError(f'input size {img_size} is too small for AlexNet')
    return size[0], size[1]


def _feature_indices(count: int, indices: Optional[Union[int, List[int]]]) -> Tuple[List[int], int]:
    """timm's rule for which features to take (its helper is not in timm's public API): None takes all, an int n
    the last n, a list those (negative ones from the end); and the largest index taken."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f'last-n ({indices}) is out of range (1 to {count})')
        taken = list(range(count - indices, count))
    else:
        taken = [count + i if i < 0 else i for i in indices]
        if not all(0 <= i < count for i in taken):
            raise ValueError(f'feature indices {list(indices)} are out of range (0 to {count - 1})')
    return taken, max(taken)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map torchvision's AlexNet keys (``classifier.{1,4,6}``) to ours; a native checkpoint passes unchanged."""
    state_dict = state_dict.get('state_dict', state_dict)
    if not any(k.startswith('classifier.') for k in state_dict):
        return state_dict
    rename = {'classifier.1.': 'head.pre_logits.fc1.', 'classifier.4.': 'head.pre_logits.fc2.', 'classifier.6.': 'head.fc.'}
    out = {}
    for k, v in state_dict.items():
        for old, new in rename.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out


def _create_alexnet(variant: str, pretrained: bool = False, **kwargs: Any) -> AlexNet:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3, 4))
    return build_model_with_cfg(
        AlexNet,
        variant,
        pretrained,
        cfg=model_cfgs[variant],
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (6, 6),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'features.0', 'classifier': 'head.fc',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'alexnet.tv_in1k': _cfg(
        url='https://download.pytorch.org/models/alexnet-owt-7be5be79.pth',
        license='bsd-3-clause', origin_url='https://github.com/pytorch/vision',
        paper_ids='NIPS2012:4824', paper_name='ImageNet Classification with Deep Convolutional Neural Networks',
    ),
    'alexnet_bn': _cfg(input_size=(3, 227, 227), fixed_input_size=True, license='apache-2.0'),
    'alexnet_lrn': _cfg(
        input_size=(3, 227, 227), fixed_input_size=True, license='apache-2.0', paper_ids='NIPS2012:4824'),
})


@register_model
def alexnet(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet in torchvision's layout; loads torchvision's ImageNet weights."""
    return _create_alexnet('alexnet', pretrained=pretrained, **kwargs)


@register_model
def alexnet_bn(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet with BatchNorm after every block and hidden FC layer (the design card's layer table)."""
    return _create_alexnet('alexnet_bn', pretrained=pretrained, **kwargs)


@register_model
def alexnet_lrn(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """The 2012 paper's AlexNet: local response normalization, two-GPU split as grouped convolutions."""
    return _create_alexnet('alexnet_lrn', pretrained=pretrained, **kwargs)
