"""BCSS (breast cancer semantic segmentation, Amgad et al. 2019) as published (:mod:`.reader`), referring
records built from it for LTSE (:mod:`.referring`, BCSS-Ref style), and a synthetic copy in the published
layout (:mod:`.synthetic`).
"""

from . import reader, referring, synthetic
