"""How results are measured and shown: binary and multi-class metrics, tables, pictures.
"""

import importlib

__all__ = ['cost', 'instances', 'metrics', 'reports', 'semantic', 'visualize']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
