"""Dataset readers (as the publishers ship the data), builders of records, synthetic writers.
"""

from . import (
    datalist, file_reading, files, lvit, mask_prompts, output_folder, prompt_json, seg_answers, bcss, pannuke, puma,
    referring_ct, synthetic)
