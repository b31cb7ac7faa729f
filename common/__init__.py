"""Code shared by the text-guided segmentation bundles.

Nothing in this package imports a bundle; bundles import from here. Submodules
load on first attribute access, so bundle configs can write
``$import common`` and then ``common.datasets.build_datalist(...)``.
"""

import importlib

__all__ = [
    "config", "contrastive", "datasets", "engine", "errors", "evaluation", "image_encoders", "inference",
    "metrics", "pretrained", "referring_ct", "sample_datasets", "synthetic", "text_encoders", "visualize",
    "clip_encoders", "pannuke", "semantic_metrics",
]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
