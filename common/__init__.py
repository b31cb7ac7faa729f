"""Code shared by the text-guided segmentation bundles, in rooms whose imports run one way (down):

* :mod:`common.core`: the command line of a bundle run and what a failed run prints;
* :mod:`common.networks`: text and image encoders, SAM / SAM2 / LLaVA parts, contrastive losses;
* :mod:`common.evaluation`: metrics, tables and pictures;
* :mod:`common.data`: dataset readers, builders and synthetic writers (they read files with ``transforms``);
* :mod:`common.engine`: the glue to MONAI's ignite engines: training, checkpoints, evaluation and
  inference runs (imports all of the above).

Below all of them lies :mod:`transforms` and its ground floor :mod:`transforms.base` (errors, typed and
self-describing construction, pretrained loading), which imports nothing of ``common``. Nothing here
imports a bundle. ``import common`` imports every module, so bundle configs can write ``$import common``
and then ``common.data.datalist.build_datalist(...)``; heavy optional libraries (open_clip, peft,
segment_anything, sam2, bitsandbytes) load inside the functions that need them.
"""

from . import core, networks, evaluation, data, engine
