"""Code shared by the text-guided segmentation bundles, in rooms whose imports run one way:

* :mod:`common.core`: errors, command-line values, pretrained-weight resolution, self-describing
  construction (imports nothing else of the project);
* :mod:`common.networks`: text and image encoders, contrastive losses (imports ``core``);
* :mod:`common.data`: dataset readers, builders and synthetic writers (imports ``core`` and ``transforms``);
* :mod:`common.evaluation`: metrics, tables and pictures (imports ``core``);
* :mod:`common.engine`: the glue to MONAI's ignite engines: training, checkpoints, evaluation and
  inference runs (imports all of the above).

Nothing here imports a bundle. Subpackages and their modules load on first attribute access, so
bundle configs can write ``$import common`` and then ``common.data.datalist.build_datalist(...)``.
"""

import importlib

__all__ = ['core', 'networks', 'data', 'evaluation', 'engine']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
