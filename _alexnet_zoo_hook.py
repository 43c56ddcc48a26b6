"""Registers alexnet-zoo's models with timm the moment timm is imported, without the user importing us.

timm 1.0 has no plugin entry points, so the ``alexnet_zoo.pth`` file installed with the package (from
``_alexnet_zoo_hook.pth.in``) imports this module at interpreter start-up. It must stay cheap: it only puts a
finder on ``sys.meta_path`` that wraps timm's loader; nothing heavy (torch, numpy, timm) is imported until the
program itself imports timm.
"""
import sys


class _TimmFinder:
    """A meta path finder that answers for ``timm`` only, then imports alexnet_zoo once timm has loaded."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != 'timm':
            return None
        sys.meta_path.remove(cls)  # find timm's real spec with the other finders, once
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                import alexnet_zoo.alexnet  # noqa: F401  (importing it registers the models)
            except Exception as e:  # a broken plugin must not break timm itself
                import warnings
                warnings.warn(f'alexnet-zoo: models not registered with timm ({e})')

        spec.loader.exec_module = exec_then_register
        return spec


if 'timm' not in sys.modules:
    sys.meta_path.insert(0, _TimmFinder)
