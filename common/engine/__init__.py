"""Glue to MONAI's ignite engines: the trainer, checkpoints, evaluation runs and inference writers.
"""

import importlib

__all__ = ['checkpoints', 'device_data', 'distributed', 'export', 'inference', 'network', 'run_lock', 'schedules', 'semantic_evaluation', 'text_ablation',
           'trainer']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
