"""Co-Seg bundle code: network (RP-Encoder, MP-Decoder task decoders, the two passes), loss, outputs
(validation Dice, HoVer-Net instances), evaluation tables, inference files.

Configs import this package as ``scripts`` (``$scripts.inference.inference_records`` works after ``$import scripts``);
tests and tools use it as ``bundles.coseg.scripts``.
"""

from . import decoders, evaluation, inference, losses, network, outputs, rp_encoder
