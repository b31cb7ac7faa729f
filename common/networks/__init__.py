"""Networks shared by bundles: text encoders (Hugging Face, open_clip), image backbones (timm), SAM and
SAM2 image encoders with LoRA and adapters, LLaVA, contrastive losses.
"""

from . import clip_encoders, contrastive, image_encoders, llava, sam, sam2, text_encoders
