"""AlexNet as first-class timm models; importing the package registers them with timm."""
from .alexnet import AlexNet, alexnet, alexnet_bn, alexnet_lrn

__version__ = '0.1.0'
__all__ = ['AlexNet', 'alexnet', 'alexnet_bn', 'alexnet_lrn', '__version__']
