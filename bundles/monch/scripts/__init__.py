"""MONCH bundle code: network (MGFE, progressive prompt decoder, dynamic head), loss, inference glue.

Configs import this package as ``scripts`` (``$scripts.inference.clip_denormalize`` works after ``$import scripts``);
tests and tools use it as ``bundles.monch.scripts``.
"""

from . import decode, decoder, inference, losses, mgfe, network
