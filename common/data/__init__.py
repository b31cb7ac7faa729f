"""Dataset readers (as the publishers ship the data), builders of records, synthetic writers.
"""

import importlib

__all__ = ['bcss', 'datalist', 'file_reading', 'files', 'lvit', 'mask_prompts', 'output_folder', 'prompt_json', 'pannuke', 'puma', 'referring_ct', 'seg_answers',
           'synthetic']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
