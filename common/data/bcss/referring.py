"""Referring records from BCSS masks, in the spirit of BCSS-Ref (LTSE, Tang et al.), whose text is not public.

:func:`build_referring_records` cuts each ROI into patches at two magnifications (40x: the ROI's own
0.25 micron/pixel; 20x: 0.5, the ROI downsampled by 2), and writes for each patch a few instructions that ask
for one or several tissue classes: present ones, and sometimes a class the patch does not hold, which the
answer must reject; any target may carry a position and area (the paper's "extended region annotations").
Absent targets are described like present ones and drawn so that every class is rejected in about the same
share of its mentions (:class:`NegativeBalance`): the text alone does not tell [SEG] from [REJ]. One JSON line per instruction (paths relative to the records file)::

    {"image": "40x/images/TCGA-A1-A0SK-DX1_r0_c1.png", "mask": "40x/masks/TCGA-A1-A0SK-DX1_r0_c1.png",
     "instruction": "Please segment the tumor in the upper left part and the necrosis or debris.",
     "targets": ["tumor", "necrosis_or_debris"],
     "answer": "Sure, tumor [SEG], necrosis or debris [REJ].",
     "magnification": "40x", "slide": "TCGA-A1-A0SK-DX1", "fold": 3}

``targets`` are class names of the class table written beside the records (``gtruth_codes.tsv``); a target
is present where the patch mask holds its code. The answer holds one ``[SEG]`` per present target and one
``[REJ]`` per absent one, in the targets' order. ``fold`` (0-4) is drawn per whole-slide image with a seed,
as the paper's WSI-level 5-fold split: :func:`referring_datalist` takes 4 folds to train and 1 to test.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transforms.base.errors import ConfigurationError, DatasetError
from common.core.flags import NOTHING_RUN, check_range
from common.data.file_reading import read_json_lines
from common.data.output_folder import staged_folder
from common.data.seg_answers import build_answer

from .reader import NOT_TISSUE, bcss_rois, find_code_table, phrase, read_code_table, read_roi

logger = logging.getLogger(__name__)

MAGNIFICATIONS = {"40x": 0.25, "20x": 0.5}   # name -> microns per pixel
RECORD_FIELDS = ("image", "mask", "instruction", "targets", "answer")
TABLE_NAME = "gtruth_codes.tsv"
RECORDS_NAME = "records.jsonl"  # a folder holding it is an earlier build's (builds appear only when complete)
_TEMPLATES = ("Please segment the {targets}.", "Can you segment the {targets} in this image?",
              "Where is the {targets}? Please output the segmentation mask.", "Show me the {targets}.",
              "Segment the {targets} in this pathology image.")
_ROWS, _COLS = ("upper", "middle", "lower"), ("left", "centre", "right")


def join_words(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'; with a comma inside an item ('tumor in the centre, covering about 30% of
    the patch') the last one is set off by ', and' so it does not read as part of that item."""
    if len(words) == 1:
        return words[0]
    last = ", and " if any("," in w for w in words[:-1]) else " and "
    return ", ".join(words[:-1]) + last + words[-1]


def position_phrase(region: np.ndarray) -> str:
    """Where a region's centroid lies in a 3x3 grid of the patch: 'in the upper left part', 'in the centre'."""
    ys, xs = np.nonzero(region)
    h, w = region.shape
    row, col = _ROWS[min(2, int(3 * ys.mean() / h))], _COLS[min(2, int(3 * xs.mean() / w))]
    if row == "middle":
        return "in the centre" if col == "centre" else f"on the {col}"
    return f"in the {row} part" if col == "centre" else f"in the {row} {col} part"


def area_phrase(region: np.ndarray) -> str:
    percent = max(1, int(round(100 * region.mean() / 5) * 5)) if region.mean() >= 0.025 else 1
    return f"covering about {percent}% of the patch" if percent > 1 else "covering a small area"


def _downsample(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    size = (max(1, round(image.shape[1] / factor)), max(1, round(image.shape[0] / factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    codes = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    return small, codes.astype(np.int64)


def _patches(shape: tuple[int, int], patch_size: int):
    for r in range(shape[0] // patch_size):
        for c in range(shape[1] // patch_size):
            yield r, c, (slice(r * patch_size, (r + 1) * patch_size), slice(c * patch_size, (c + 1) * patch_size))


def folds_by_slide(slides: Sequence[str], num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """A seeded assignment of whole-slide images to ``num_folds`` folds of near-equal size."""
    order = sorted(set(slides))
    rng = np.random.default_rng(seed)
    return {slide: i % num_folds for i, slide in enumerate(rng.permutation(order).tolist())}


class NegativeBalance:
    """What keeps the text alone from telling a present target from an absent one, across a whole build.

    * Class prior: each absent target (negative) is the candidate class with the fewest negatives per present
      mention so far (``present[c] / (absent[c] + 1)`` largest; ties drawn at random), among the classes that
      have been asked for as present. So every class ends up rejected in about the same share of its mentions,
      and a class never asked for as present is never asked for as absent (it would be a giveaway).
    * Descriptions: an absent target is described (position and area) as often as a present one, with a
      description drawn from those this class got when it was present (``memory`` per class), so the phrase
      reads the same either way.
    """

    def __init__(self, memory: int = 64):
        self.present: dict[str, int] = {}
        self.absent: dict[str, int] = {}
        self.descriptions: dict[str, list[str]] = {}
        self.memory = memory

    def saw_present(self, name: str, description: str, rng: np.random.Generator) -> None:
        self.present[name] = self.present.get(name, 0) + 1
        kept = self.descriptions.setdefault(name, [])
        if len(kept) < self.memory:
            kept.append(description)
        else:  # reservoir: a uniform sample of every description this class got
            k = int(rng.integers(self.present[name]))
            if k < self.memory:
                kept[k] = description

    def pick_absent(self, candidates: Sequence[str], rng: np.random.Generator) -> str | None:
        seen = [c for c in candidates if self.present.get(c, 0)]
        if not seen:
            return None
        ratio = np.array([self.present[c] / (self.absent.get(c, 0) + 1) for c in seen])
        best = [c for c, r in zip(seen, ratio) if r >= ratio.max() - 1e-12]
        name = best[int(rng.integers(len(best)))]
        self.absent[name] = self.absent.get(name, 0) + 1
        return name

    def description(self, name: str, rng: np.random.Generator) -> str:
        kept = self.descriptions[name]
        return kept[int(rng.integers(len(kept)))]


def instructions_for_patch(mask: np.ndarray, tissue: Mapping[int, str], rng: np.random.Generator, count: int = 2,
                           max_targets: int = 3, absent_prob: float = 0.3, describe_prob: float = 0.5,
                           min_area: float = 0.01, balance: NegativeBalance | None = None) -> list[dict]:
    """``count`` (instruction, targets, answer) dicts for one patch mask of class codes.

    Present candidates cover at least ``min_area`` of the patch; absent ones do not occur in it at all
    (a class with a few pixels is neither asked for nor rejected). ``tissue``: code -> name of the classes
    a user may ask for.

    ``balance``: one :class:`NegativeBalance` shared by every patch of a build, so that neither a target's class
    nor its description tells whether it is present (a text-only model cannot beat chance); each target is then
    replaced by an absent class with probability ``absent_prob`` (so an instruction may hold only absent
    targets, and the number of targets says nothing either). None: the earlier
    builder, with a shortcut: only present targets were described, negatives were drawn uniformly from every
    absent class (mostly rare ones), and at most one per instruction was added to >= 1 present target
    (``absent_prob`` per instruction); kept to reproduce earlier builds.
    """
    names = list(tissue.values())
    fractions = {tissue[c]: float((mask == c).mean()) for c in tissue}
    present = [n for n in names if fractions[n] >= min_area]
    absent = [n for n in names if fractions[n] == 0.0]
    code_of = {n: c for c, n in tissue.items()}

    def region_words(name: str) -> str:
        region = mask == code_of[name]
        return f"{position_phrase(region)}, {area_phrase(region)}"

    out = []
    for _ in range(count if present else 0):
        k = int(rng.integers(1, min(max_targets, len(present)) + 1))
        chosen = [present[i] for i in rng.choice(len(present), size=k, replace=False)]
        if balance is None:  # the earlier builder: at most one negative, added beside the present targets
            if absent and rng.random() < absent_prob:
                chosen = chosen[: max_targets - 1]
                chosen.insert(int(rng.integers(0, len(chosen) + 1)), absent[int(rng.integers(len(absent)))])
        else:  # each target independently absent: neither the target count nor the slot tells
            for i in range(len(chosen)):
                if rng.random() < absent_prob:
                    negative = balance.pick_absent([a for a in absent if a not in chosen], rng)
                    if negative is not None:
                        chosen[i] = negative
            for name in chosen:  # the present targets asked for, counted before a negative may be described
                if name in present:
                    balance.saw_present(name, region_words(name), rng)
        words = []
        for name in chosen:
            word = phrase(name)
            if balance is None:
                if name in present and rng.random() < describe_prob:
                    word = f"{word} {region_words(name)}"
            elif rng.random() < describe_prob:
                word = f"{word} {region_words(name) if name in present else balance.description(name, rng)}"
            words.append(word)
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        instruction = template.format(targets=join_words(words))
        answer, _ = build_answer([phrase(n) for n in chosen], [n in present for n in chosen], max_seg_tokens=max_targets)
        out.append({"instruction": instruction, "targets": chosen, "answer": answer})
    return out


def check_record_settings(patch_size: int = 512, instructions_per_patch: int = 2, max_targets: int = 3,
                          absent_prob: float = 0.3, describe_prob: float = 0.5, min_area: float = 0.01,
                          max_outside: float = 0.5, num_folds: int = 5, max_patches_per_roi: int | None = None) -> None:
    """Refuse settings :func:`build_referring_records` cannot use, before it reads a ROI (build_bcss_ref.py's flags)."""
    check_range("patch_size", patch_size, 1)
    check_range("instructions_per_patch", instructions_per_patch, 1)
    if not 1 <= max_targets <= 10:
        raise ConfigurationError(f"--max_targets must be from 1 to 10 (LTSE answers hold at most M = 10 [SEG]), got "
                                 f"{max_targets}. {NOTHING_RUN}")
    for flag, value in (("absent_prob", absent_prob), ("describe_prob", describe_prob), ("min_area", min_area),
                        ("max_outside", max_outside)):
        check_range(flag, value, 0, 1)
    check_range("num_folds", num_folds, 2)  # one fold tests, the others train
    if max_patches_per_roi is not None:
        check_range("max_patches_per_roi", max_patches_per_roi, 1)


def build_referring_records(bcss_dir: str | Path, out_dir: str | Path, patch_size: int = 512,
                            magnifications: Mapping[str, float] | None = None, instructions_per_patch: int = 2,
                            max_targets: int = 3, absent_prob: float = 0.3, describe_prob: float = 0.5,
                            min_area: float = 0.01, max_outside: float = 0.5, num_folds: int = 5, seed: int = 0,
                            max_patches_per_roi: int | None = None, overwrite: bool = False,
                            progress: bool = True, balanced: bool = True) -> Path:
    """Write patches, masks and ``records.jsonl`` (module doc) in a new ``out_dir``; returns the records file.

    Args:
        bcss_dir: BCSS as published (:mod:`.reader`).
        patch_size: side of the square patches, in pixels of each magnification.
        magnifications: name -> microns per pixel (default 40x = 0.25, 20x = 0.5).
        instructions_per_patch, max_targets, absent_prob, describe_prob, min_area: see
            :func:`instructions_for_patch` (``max_targets`` must not exceed LTSE's M = 10).
        max_outside: skip patches with more than this fraction outside the annotated ROI (code 0).
        num_folds, seed: the WSI-level split (:func:`folds_by_slide`).
        max_patches_per_roi: keep at most this many patches per ROI and magnification (None: all).
        balanced: absent targets described like present ones and drawn so the class prior tells nothing
            (:class:`NegativeBalance`); False: the earlier builder's text, where a described target is always
            present and negatives are mostly rare classes (a text-only shortcut; for reproducing old builds).
        overwrite: replace an ``out_dir`` an earlier build wrote (one with ``records.jsonl``); otherwise an
            ``out_dir`` that holds files is refused. The records are written beside ``out_dir`` and renamed to
            it when complete (:mod:`common.data.output_folder`), so a failed build leaves nothing behind.
    """
    check_record_settings(patch_size, instructions_per_patch, max_targets, absent_prob, describe_prob, min_area,
                          max_outside, num_folds, max_patches_per_roi)
    table_file = find_code_table(bcss_dir)
    table = read_code_table(table_file)
    rois = bcss_rois(bcss_dir)
    with staged_folder(out_dir, overwrite, written_by=RECORDS_NAME) as folder:
        count = _write_records(folder, rois, table, table_file, patch_size, dict(magnifications or MAGNIFICATIONS),
                               instructions_per_patch, max_targets, absent_prob, describe_prob, min_area, max_outside,
                               num_folds, seed, max_patches_per_roi, progress, balanced)
        if count == 0:
            raise DatasetError(bcss_dir, f"no patch of {patch_size} px held enough annotated tissue; lower patch_size")
    records_file = Path(out_dir) / RECORDS_NAME
    logger.info("%d referring records from %d ROIs in %s", count, len(rois), records_file)
    return records_file


def _write_records(out: Path, rois, table, table_file, patch_size, magnifications, instructions_per_patch,
                   max_targets, absent_prob, describe_prob, min_area, max_outside, num_folds, seed,
                   max_patches_per_roi, progress, balanced=True) -> int:
    """Write the patches, masks, class table and records of :func:`build_referring_records` into ``out``."""
    from PIL import Image
    from tqdm import tqdm

    tissue = {c: n for c, n in table.items() if n not in NOT_TISSUE}
    folds = folds_by_slide([r.slide for r in rois], num_folds, seed)
    rng = np.random.default_rng(seed)
    balance = NegativeBalance() if balanced else None
    shutil.copyfile(table_file, out / TABLE_NAME)
    count = 0
    with (out / RECORDS_NAME).open("w") as f:
        for roi in tqdm(rois, desc="BCSS ROIs", disable=not progress):
            image, mask = read_roi(roi, table)
            for mag, mpp in magnifications.items():
                factor = mpp / roi.mpp
                img, codes = (image, mask) if abs(factor - 1) < 1e-6 else _downsample(image, mask, factor)
                (out / mag / "images").mkdir(parents=True, exist_ok=True)
                (out / mag / "masks").mkdir(parents=True, exist_ok=True)
                kept = 0
                for r, c, window in _patches(codes.shape, patch_size):
                    patch_codes = codes[window]
                    if (patch_codes == 0).mean() > max_outside:
                        continue
                    items = instructions_for_patch(patch_codes, tissue, rng, instructions_per_patch, max_targets,
                                                   absent_prob, describe_prob, min_area, balance)
                    if not items:
                        continue
                    name = f"{roi.image.stem}_r{r}_c{c}.png"
                    Image.fromarray(img[window]).save(out / mag / "images" / name)
                    Image.fromarray(patch_codes.astype(np.uint8)).save(out / mag / "masks" / name)
                    for item in items:
                        record = {"image": f"{mag}/images/{name}", "mask": f"{mag}/masks/{name}", **item,
                                  "magnification": mag, "slide": roi.slide, "fold": folds[roi.slide]}
                        f.write(json.dumps(record) + "\n")
                        count += 1
                    kept += 1
                    if max_patches_per_roi and kept >= max_patches_per_roi:
                        break
    return count


def _line_error(path: Path, number: int, problem: str) -> DatasetError:
    return DatasetError(path, f"record {number}: {problem}")


def read_referring_records(records_file: str | Path, max_targets: int = 10) -> list[dict]:
    """Every record of a referring JSONL file, checked: fields, class names in the table beside it, target
    count, and that the image and mask files exist and have one size. Errors name the file and record (line).

    Paths become absolute; ``targets`` stay names, ``codes`` (one per target) are added.
    """
    from PIL import Image

    path = Path(records_file)
    if not path.is_file():
        raise DatasetError(path, "referring records not found (scripts/build_bcss_ref.py writes them)")
    table = read_code_table(path.parent / TABLE_NAME) if (path.parent / TABLE_NAME).is_file() else None
    if table is None:
        raise DatasetError(path, f"no class table {TABLE_NAME} beside the records (the builder copies BCSS's there)")
    code_of = {n: c for c, n in table.items()}
    sizes: dict[Path, tuple[int, int]] = {}

    def size(file: Path, number: int, field: str) -> tuple[int, int]:
        if file not in sizes:
            if not file.is_file():
                raise _line_error(path, number, f"{field} file {file} not found")
            with Image.open(file) as im:
                sizes[file] = im.size
        return sizes[file]

    records = []
    for number, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise _line_error(path, number, f"is not a record of named fields: {record!r}")
        missing = [k for k in RECORD_FIELDS if k not in record]
        if missing:
            raise _line_error(path, number, f"lacks {missing}; a record holds {list(RECORD_FIELDS)}")
        instruction = record["instruction"]
        if not isinstance(instruction, str) or not instruction.strip():
            raise _line_error(path, number, f"instruction must be a non-empty text, got {instruction!r}")
        targets = record["targets"]
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
            raise _line_error(path, number, f"targets must be a non-empty list of class names, got {targets!r}")
        unknown = [t for t in targets if t not in code_of]
        if unknown:
            raise _line_error(path, number, f"targets {unknown} are not classes of {TABLE_NAME} "
                                            f"({', '.join(code_of)})")
        if len(targets) > max_targets:
            raise _line_error(path, number, f"{len(targets)} targets, more than the {max_targets} "
                                            "[SEG] tokens an answer may hold (max_seg_tokens)")
        record = dict(record, image=str(path.parent / record["image"]), mask=str(path.parent / record["mask"]),
                      codes=[code_of[t] for t in targets], class_codes=sorted(table), record=f"{path}:{number}")
        image_size, mask_size = size(Path(record["image"]), number, "image"), size(Path(record["mask"]), number, "mask")
        if image_size != mask_size:
            raise _line_error(path, number, f"image {record['image']} is {image_size[0]}x{image_size[1]} but mask "
                                            f"{record['mask']} is {mask_size[0]}x{mask_size[1]}")
        records.append(record)
    if not records:
        raise DatasetError(path, "holds no records")
    return records


def referring_datalist(records_file: str | Path, split: str, test_fold: int = 0, val_fold: int | None = None,
                       max_targets: int = 10, limit: int | None = None) -> list[dict]:
    """The records of one split: ``test`` = fold ``test_fold``; ``val`` = fold ``val_fold`` (none if None);
    ``train`` = the other folds (the paper: 4 folds train, 1 tests). ``limit``: the first N only."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    if val_fold is not None and val_fold == test_fold:
        raise ValueError(f"val_fold and test_fold are both {test_fold}: the model would be chosen on the test fold")
    records = read_referring_records(records_file, max_targets)
    if any("fold" not in r for r in records) and split != "all":
        raise DatasetError(records_file, "records without a 'fold' field can only be used whole (split='all')")
    held = {"test": {test_fold}, "val": set() if val_fold is None else {val_fold}}
    if split == "train":
        chosen = [r for r in records if r["fold"] not in held["test"] | held["val"]]
    elif split == "all":
        chosen = records
    else:
        chosen = [r for r in records if r["fold"] in held[split]]
    return chosen[:limit] if limit else chosen
