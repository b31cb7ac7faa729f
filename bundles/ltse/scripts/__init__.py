"""LTSE bundle code: network (LLaVA + [SEG]/[REJ] + SAM + expert mixture), the expert mixture, loss, inputs
(record -> tensors, batch -> network arguments, the inferer), evaluation (gIoU / cIoU / N-Acc, overlays),
inference files.

Configs import this package as ``scripts`` (``$scripts.inference.inference_records`` works after ``$import scripts``);
tests and tools use it as ``bundles.ltse.scripts``.
"""

from . import aem, evaluation, inference, inputs, losses, network
