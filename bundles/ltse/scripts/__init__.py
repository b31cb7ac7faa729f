"""LTSE bundle code: network (LLaVA + [SEG]/[REJ] + SAM + expert mixture), the expert mixture, loss, inputs
(record -> tensors, batch -> network arguments, the inferer), evaluation (gIoU / cIoU / N-Acc, overlays),
inference files.

Configs import this package as ``scripts`` (submodules load on first attribute access, so
``$scripts.inference.inference_records`` works after ``$import scripts``); tests import
``bundles.ltse.scripts``.
"""

import importlib

__all__ = ["aem", "evaluation", "inference", "inputs", "losses", "network"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
