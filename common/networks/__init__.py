"""Networks shared by bundles: text encoders (Hugging Face, open_clip), image backbones (timm), SAM and
SAM2 image encoders with LoRA and adapters, LLaVA, contrastive losses.
"""

import importlib

__all__ = ['clip_encoders', 'contrastive', 'image_encoders', 'llava', 'sam', 'sam2', 'text_encoders']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
