"""Co-Seg bundle code: network (RP-Encoder, MP-Decoder task decoders, the two passes), loss, outputs
(validation Dice, HoVer-Net instances), evaluation tables, inference files.

Configs import this package as ``scripts`` (submodules load on first attribute access, so
``$scripts.inference.inference_records`` works after ``$import scripts``); tests import
``bundles.coseg.scripts``.
"""

import importlib

__all__ = ["decoders", "evaluation", "inference", "losses", "network", "outputs", "rp_encoder"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
