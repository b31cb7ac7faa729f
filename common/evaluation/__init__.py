"""How results are measured and shown: binary and multi-class metrics, tables, pictures.
"""

from . import cost, instances, metrics, reports, semantic, visualize
