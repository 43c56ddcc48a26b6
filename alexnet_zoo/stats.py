"""Parameter and FLOP counts measured from the models themselves, for the model card.

``python -m alexnet_zoo.stats`` prints the table that docs/model_card.md quotes.
"""
from typing import Dict

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .cli import run_cli


def flops_per_image(model: torch.nn.Module) -> int:
    """FLOPs of one image at the model's input size, counted by PyTorch's FlopCounterMode (1 multiply-add = 2)."""
    size = model.pretrained_cfg['input_size']
    parameter = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *size, dtype=parameter.dtype, device=parameter.device))
    return int(counter.get_total_flops())


def model_stats(name: str, num_classes: int = 1000) -> Dict[str, float]:
    """Parameters, FLOPs per image at the default input size (1 multiply-add = 2 FLOPs), share of FC weights."""
    model = timm.create_model(name, num_classes=num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    fc = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    size = model.pretrained_cfg['input_size']
    flops = flops_per_image(model)
    return {'params': params, 'flops': flops, 'macs': flops / 2, 'fc_share': fc / params, 'input': size[-1]}


def main() -> None:
    print('| model | input | parameters | GFLOPs | G multiply-adds | FC share of weights |')
    print('| --- | --- | ---: | ---: | ---: | ---: |')
    for name, classes in (('alexnet_bn', 1000), ('alexnet_bn', 17), ('alexnet', 1000), ('alexnet_lrn', 1000)):
        s = model_stats(name, classes)
        label = name if classes == 1000 else f'{name} ({classes} classes)'
        print(f"| {label} | {s['input']} | {s['params']:,} | {s['flops'] / 1e9:.3f} | {s['macs'] / 1e9:.3f} | {s['fc_share']:.1%} |")


if __name__ == '__main__':
    run_cli(lambda argv: main() or 0)  # a closed pipe (| head) or Ctrl-C: one line, no traceback
