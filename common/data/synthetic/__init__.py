"""Synthetic scenes in which the text decides the target, written in the published dataset layouts.
"""

from . import ownership, sample_datasets, scenes
