"""Referring lesion segmentation in CT: the record and its reader, lesion geometry, expressions,
the builder, synthetic volumes.
"""

from . import builder, expressions, geometry, records, synthetic
