"""MONCH bundle code: network (MGFE, progressive prompt decoder, dynamic head), loss, inference glue.

Configs import this package as ``scripts`` (submodules load on first attribute access, so
``$scripts.inference.clip_denormalize`` works after ``$import scripts``); tests import
``bundles.monch.scripts``.
"""

import importlib

__all__ = ["decode", "decoder", "inference", "losses", "mgfe", "network"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
