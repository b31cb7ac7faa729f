"""PanNuke: the fold reader and class table, and synthetic folds in the same layout.
"""

from . import reader, synthetic
