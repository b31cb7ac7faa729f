"""PUMA (melanoma tissue + nuclei) as published: ROI images with GeoJSON annotations (:mod:`.reader`), and a
synthetic copy in the same layout (:mod:`.synthetic`).
"""

from . import reader, synthetic
