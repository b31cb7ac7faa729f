"""The core: errors with file and key names, command-line values, pretrained-weight resolution,
and self-describing construction. Imports nothing else of the project.
"""

import importlib

__all__ = ['config', 'describe', 'errors', 'flags', 'pretrained']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
