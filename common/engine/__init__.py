"""Glue to MONAI's ignite engines: the trainer, checkpoints, evaluation runs and inference writers.
"""

from . import (
    checkpoints, config_files, device_data, distributed, export, inference, network, run_lock, schedules,
    semantic_evaluation, text_ablation, trainer)
