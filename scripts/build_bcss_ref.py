"""Build BCSS-Ref-style referring records from BCSS (the paper's BCSS-Ref text is not public).

    python scripts/build_bcss_ref.py --bcss_dir /data/BCSS --out_dir /data/BCSS-Ref
    python scripts/build_bcss_ref.py --bcss_dir /data/BCSS --out_dir /data/BCSS-Ref --patch_size 512 \
        --instructions_per_patch 3 --absent_prob 0.3 --seed 0

Cuts each ROI into patches at 40x (0.25 micron/pixel, the ROI itself) and 20x (downsampled by 2), and writes
per patch a few instructions asking for one or several tissue classes (some described by position and area),
each target replaced with probability --absent_prob by a class the patch lacks; the answers hold one [SEG] per
present target and one [REJ] per absent one. Absent targets are described like present ones and drawn so every
class is rejected in about the same share of its mentions: the text alone does not give the answer
(--balanced false: the earlier builder's text, which did; for reproducing old builds only). Output: <out_dir>/{40x,20x}/{images,masks}/*.png, <out_dir>/records.jsonl (one JSON object per line:
image, mask, instruction, targets, answer, magnification, slide, fold) and the class table
gtruth_codes.tsv. Folds are drawn per whole-slide image (seeded): train on 4, test on 1 (train.yaml:
test_fold). Format: common/data/bcss/referring.py.

``out_dir`` must be new or empty (``--overwrite true`` replaces what an earlier run wrote there); the records
are written beside it and take its name only when complete, so a failed run leaves nothing behind.
"""

import logging

import _repo  # noqa: F401  (puts the repository root on sys.path)

from transforms.base.describe import typed
from common.data.bcss.referring import build_referring_records


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(bcss_dir: str, out_dir: str, patch_size: int = 512, instructions_per_patch: int = 2, max_targets: int = 3,
         absent_prob: float = 0.3, describe_prob: float = 0.5, min_area: float = 0.01, max_outside: float = 0.5,
         num_folds: int = 5, seed: int = 0, max_patches_per_roi: int | None = None, overwrite: bool = False,
         balanced: bool = True) -> str:
    """Write patches, masks and records.jsonl under ``out_dir`` (module doc); returns the records file."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_referring_records(bcss_dir, out_dir, patch_size=patch_size,
                                   instructions_per_patch=instructions_per_patch, max_targets=max_targets,
                                   absent_prob=absent_prob, describe_prob=describe_prob, min_area=min_area,
                                   max_outside=max_outside, num_folds=num_folds, seed=seed,
                                   max_patches_per_roi=max_patches_per_roi, overwrite=overwrite, balanced=balanced)
    return str(path)


if __name__ == "__main__":
    _repo.run_cli(main)
