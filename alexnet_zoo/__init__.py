"""AlexNet as first-class timm models; importing the package registers them with timm.

Registration needs timm and torch, which the light paths (``alexnet_zoo.cli``, ``alexnet_zoo.files``, the
TensorRT preflight) must not pay for. So the models register now if timm is already loaded, else the moment timm
is imported (the start-up hook's finder); ``AlexNet`` and the entrypoints import on first use.
"""
import sys

__version__ = '0.1.0'
__all__ = ['AlexNet', 'alexnet', 'alexnet_bn', 'alexnet_lrn', '__version__']

if 'timm' in sys.modules:
    from .alexnet import AlexNet, alexnet, alexnet_bn, alexnet_lrn  # registers the models
else:
    import _alexnet_zoo_hook  # noqa: F401  (registers them when timm is imported)


def __getattr__(name: str):
    if name in __all__:
        from . import alexnet as models
        return getattr(models, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
