"""Write text prompts from masks, for a dataset that has images and masks but no reports.

    python scripts/make_prompts.py --data_dir /data/ISIC --class_name lesion
    python scripts/make_prompts.py --data_dir /data/BUSI --class_name tumor --split "[0.8,0.1,0.1]"
    python scripts/make_prompts.py --data_dir /data/mine --classes "{1: 'tumor', 2: 'stroma'}" --negatives true
    python scripts/make_prompts.py --datalist records.json --class_name polyp --out_dir /data/polyp_prompts

Input: ``--data_dir`` holding ``images/`` and ``masks/`` with matching file stems (``img_001.jpg`` and
``img_001.png``), or ``--datalist``, a JSON list of ``{"image": path, "label": path}``. Masks are binary
(any non-zero value, or above 127 for masks saved as JPEG, as the dataset readers take them) unless
``--classes`` maps label values to class names; then each class present in an image gives a record with a
mask of its own (written to ``<out_dir>/class_masks/``), and with ``--negatives true`` each absent class a
"no <class>" record. A binary mask whose target the kvasir reader would not see (it takes values above 127:
a 0/1 or 0/2 PNG) gets a 0/255 copy in ``<out_dir>/binary_masks/`` that its record names.

Output, in ``--out_dir`` (default: ``--data_dir``; elsewhere, records name the images and masks by their
absolute paths): ``anns/train.json``, ``anns/val.json``,
``anns/test.json`` in Poudel et al.'s format (prompt levels p0..p9: ``common/data/mask_prompts.py``) and
``anns/prompts_report.json`` (what was written, empty masks, attribute counts). Train any bundle that
takes one text per image on it with ``--dataset_format kvasir --dataset_dir <out_dir> --prompt_level p6``.

``--definitions "{'polyp': ['a projecting growth of tissue', ...]}"`` gives p7-p9 the class's definitions,
as Poudel et al.'s files have; without them p7-p9 are seeded rephrasings of p6's content.

Splits: ``--split`` fractions (train, val, test; seeded by ``--seed``), or ``--split_file``, a JSON
``{"train": [stems], "val": [...], "test": [...]}``. Existing prompt files are not replaced unless
``--overwrite true``. Empty masks are counted and named in the report and dropped (``--empty drop``) or
kept as "no <class>" records (``--empty keep``); a run that would write no record at all fails and writes nothing.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import json
from pathlib import Path

import numpy as np

from transforms.base.describe import typed
from transforms.base.errors import DatasetError
from common.core.flags import check_choice
from common.data.datalist import mask_threshold
from common.data.file_reading import read_image, read_json
from common.data.mask_prompts import PromptSettings, attributes, foreground, prompts, record_rng

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
READER_THRESHOLD = mask_threshold("kvasir")  # the outputs are read as --dataset_format kvasir


def find_pairs(data_dir: Path, images: str = "images", masks: str = "masks") -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` of every image in ``<data_dir>/<images>``; an image without a mask raises."""
    image_dir, mask_dir = data_dir / images, data_dir / masks
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(folder, f"folder does not exist; --data_dir must hold {images}/ and {masks}/")
    mask_files = {}
    for path in sorted(mask_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            mask_files.setdefault(path.stem, path)
    pairs = []
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        mask = mask_files.get(path.stem)
        if mask is None:
            raise DatasetError(path, f"no mask for this image: looked for {mask_dir}/{path.stem}.* "
                                     f"({', '.join(IMAGE_EXTENSIONS)})")
        pairs.append((path.stem, path, mask))
    if not pairs:
        raise DatasetError(image_dir, f"no images ({', '.join(IMAGE_EXTENSIONS)})")
    return pairs


def read_datalist(path: Path) -> list[tuple[str, Path, Path]]:
    entries = read_json(path)
    pairs = []
    for n, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or not entry.get("image") or not entry.get("label"):
            raise DatasetError(path, f"record {n} needs 'image' and 'label'")
        image, label = (Path(entry[k]) if Path(entry[k]).is_absolute() else path.parent / entry[k] for k in ("image", "label"))
        for f in (image, label):
            if not f.is_file():
                raise DatasetError(path, f"record {n}: {f} does not exist")
        pairs.append((image.stem, image, label))
    if not pairs:
        raise DatasetError(path, "the datalist must be a non-empty JSON list of {image, label} records")
    return pairs


def read_mask(path: Path) -> np.ndarray:
    img = read_image(path)
    array = np.asarray(img.convert("L") if img.mode in ("RGB", "RGBA") else img)
    return array[..., 0] if array.ndim == 3 else array


def write_binary_mask(path: Path, target: np.ndarray) -> Path:
    """``target`` as a 0/255 PNG: what the kvasir reader, which takes values above 127, reads back."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(target.astype(np.uint8) * 255).save(path)
    return path


def split_of(stems: list[str], fractions, seed: int, split_file: str | None) -> dict[str, str]:
    """stem -> split: from ``split_file``, or drawn by ``fractions`` (seeded)."""
    if split_file:
        given = read_json(split_file)
        if not isinstance(given, dict) or not all(isinstance(given.get(s, []), list) for s in SPLITS):
            raise DatasetError(split_file, 'a split file is {"train": [stems], "val": [...], "test": [...]}')
        out = {s: split for split in SPLITS for s in given.get(split, [])}
        missing = [s for s in stems if s not in out]
        if missing:
            raise DatasetError(split_file, f"{len(missing)} image(s) in no split, e.g. {missing[:3]}")
        return out
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or fractions.min() < 0 or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"--split must be three fractions (train, val, test) that sum to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    bounds = np.round(np.cumsum(fractions) * len(stems)).astype(int)
    names = np.searchsorted(bounds, np.arange(len(stems)), side="right")
    return {stems[i]: SPLITS[min(int(k), 2)] for i, k in zip(order, names)}


def _relative(target: Path, folder: Path) -> str:
    """``target`` as the reader joins it to ``folder``: a bare name when it lies in that folder, else its
    absolute path (the reader's ``folder / name`` is then that path)."""
    return target.name if target.parent.resolve() == folder.resolve() else str(target.resolve())


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(data_dir: str | None = None, datalist: str | None = None, out_dir: str | None = None,
         class_name: str = "lesion", classes: dict | None = None, negatives: bool = False, empty: str = "drop",
         split=(0.7, 0.1, 0.2), split_file: str | None = None, seed: int = 0, overwrite: bool = False,
         size_thresholds=(0.025, 0.06), round_ratio: float = 0.9, solidity_threshold: float = 0.9,
         lightness_weight: float = 0.5, palette: dict | None = None, plurals: dict | None = None,
         definitions: dict | None = None, progress_bar: bool = True) -> str:
    """Write ``anns/{train,val,test}.json`` (Poudel format) and ``anns/prompts_report.json``; returns the folder."""
    from tqdm import tqdm

    if (data_dir is None) == (datalist is None):
        raise ValueError("give --data_dir (images/ + masks/) or --datalist (a JSON list of {image, label}), not both")
    check_choice("empty", empty, ("drop", "keep"), "a way to treat empty masks")
    settings = PromptSettings(size_thresholds=tuple(size_thresholds), round_ratio=round_ratio,
                              solidity_threshold=solidity_threshold, lightness_weight=lightness_weight,
                              palette=dict(palette or PromptSettings().palette), plurals=dict(plurals or {}),
                              definitions={k: [v] if isinstance(v, str) else list(v) for k, v in (definitions or {}).items()})
    pairs = find_pairs(Path(data_dir)) if data_dir else read_datalist(Path(datalist))
    out = Path(out_dir or data_dir or Path(datalist).parent)
    anns = out / "anns"
    existing = [anns / f"{s}.json" for s in SPLITS if (anns / f"{s}.json").exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists: prompts were written here before; pass --overwrite true "
                              "to replace them, or --out_dir elsewhere")
    table = {int(k): str(v) for k, v in (classes or {}).items()}
    splits = split_of([p[0] for p in pairs], split, seed, split_file)
    written = {s: [] for s in SPLITS}
    report = {"images": len(pairs), "empty_masks": [], "dropped": 0, "records": {}, "attributes": {}}
    image_folder, mask_folder = out / "images", out / "masks"
    for stem, image_path, mask_path in tqdm(pairs, desc="prompts", disable=not progress_bar):
        image = np.asarray(read_image(image_path, "RGB"))
        mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                                          f"is {image.shape[1]}x{image.shape[0]}")
        if table:
            unknown = sorted(set(np.unique(mask).tolist()) - set(table) - {0})
            if unknown:
                raise DatasetError(mask_path, f"label values {unknown} are not in --classes {table}")
            targets = [(name, mask == value, value) for value, name in table.items()]
        else:
            targets = [(class_name, foreground(mask, mask_path), None)]
        if not any(m.any() for _, m, _ in targets):
            report["empty_masks"].append(stem)
            if empty == "drop":
                report["dropped"] += 1
                continue
        for name, target, value in targets:
            if not target.any() and not (negatives or (empty == "keep" and not any(m.any() for _, m, _ in targets))):
                continue
            attrs = attributes(image, target, settings)
            if value is None and np.array_equal(mask > READER_THRESHOLD, target):
                mask_name = _relative(mask_path, mask_folder)
            elif value is None:  # a 0/1 or 0/2 mask: the reader would see nothing above its threshold
                mask_name = _relative(write_binary_mask(out / "binary_masks" / f"{stem}.png", target), mask_folder)
            else:  # one binary mask per class, ours
                mask_name = _relative(write_binary_mask(out / "class_masks" / f"{stem}_{name}.png", target), mask_folder)
            record = {"img_name": _relative(image_path, image_folder), "mask_name": mask_name, "bbox": attrs.pop("bbox"),
                      "prompts": prompts(name, attrs, settings, record_rng(seed, f"{stem}/{name}")),
                      "attributes": dict(attrs, **({"class": name} if table else {}))}
            written[splits[stem]].append(record)
            for key in ("size", "color", "shape"):
                if key in attrs:
                    counts = report["attributes"].setdefault(key, {})
                    counts[attrs[key]] = counts.get(attrs[key], 0) + 1
    if not any(written.values()):
        raise DatasetError(data_dir or datalist, f"none of its {len(pairs)} masks holds a target (empty, e.g. "
                                                 f"{', '.join(report['empty_masks'][:3])}), so there is no record to "
                                                 "write; nothing was written. A mask's target is every non-zero pixel "
                                                 "(above 127 in a JPEG mask); --empty keep writes empty masks as "
                                                 "'no <class>' records")
    anns.mkdir(parents=True, exist_ok=True)
    for split_name, records in written.items():
        (anns / f"{split_name}.json").write_text(json.dumps(records, indent=1))
        report["records"][split_name] = len(records)
    report["settings"] = {"size_thresholds": list(settings.size_thresholds), "round_ratio": round_ratio,
                          "solidity_threshold": solidity_threshold, "lightness_weight": lightness_weight,
                          "seed": seed, "empty": empty, "negatives": negatives}
    (anns / "prompts_report.json").write_text(json.dumps(report, indent=1))
    empties = report["empty_masks"]
    print(f"{len(pairs)} images: {report['records']} records written to {anns}"
          + (f"; {len(empties)} empty mask(s) {'dropped' if empty == 'drop' else 'kept as negative records'} "
             f"(named in prompts_report.json)" if empties else ""))
    print(f"train on it: --dataset_format kvasir --dataset_dir {out} --prompt_level p6")
    return str(anns) if __name__ != "__main__" else None


if __name__ == "__main__":
    _repo.run_cli(main)
