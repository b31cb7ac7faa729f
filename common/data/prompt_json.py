"""Kvasir-SEG and BKAI-IGH NeoPolyp with Poudel et al.'s prompts.

Layout: ``images/``, ``masks/`` and one JSON list per split (``train.json``, ``val.json``,
``test.json``, in ``anns/``, ``prompts/`` or the top folder) of records ``{img_name, mask_name,
bbox, prompts: {p0..p9}}``; ``prompt_level`` picks the prompt (p7-p9 are lists, sampled during
training).
"""

from __future__ import annotations

import json
from pathlib import Path

from transforms.base.errors import DatasetError


def _prompt_file(root: Path, split: str, prompt_file: str | Path | None) -> Path:
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise DatasetError(path, "prompt file does not exist")
        return path
    names = [f"{split}.json"] + (["testA.json"] if split == "test" else [])
    folders = [root / "anns", root / "prompts", root]
    found = [f / n for f in folders for n in names if (f / n).is_file()]
    if not found:
        raise DatasetError(root, f"no prompt JSON for the {split} split; looked for {names} in anns/, prompts/ and the top folder")
    if len({p.parent for p in found}) > 1:
        raise DatasetError(root, f"prompt JSONs for the {split} split in two places, {found[0]} and "
                                 f"{next(p for p in found if p.parent != found[0].parent)}: keep one, or pass the file "
                                 "as text_file")
    return found[0]


def prompt_json_datalist(
    dataset_dir: str | Path,
    split: str,
    prompt_level: str = "p6",
    prompt_file: str | Path | None = None,
    images_subdir: str = "images",
    masks_subdir: str = "masks",
) -> list[dict]:
    """Kvasir-SEG / BKAI-IGH with Poudel et al.'s prompt JSON (see the module doc)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist (set --dataset_dir to the folder the dataset was unpacked into)")
    path = _prompt_file(root, split, prompt_file)
    try:
        entries = json.loads(path.read_text())
    except Exception as err:
        raise DatasetError(path, f"cannot parse prompt JSON ({type(err).__name__}: {err})") from err
    if not isinstance(entries, list) or not entries:
        raise DatasetError(path, "prompt JSON must be a non-empty list of records")
    image_dir, mask_dir = root / images_subdir, root / masks_subdir
    records = []
    for n, entry in enumerate(entries):
        where = f"record {n}"
        if not isinstance(entry, dict) or "img_name" not in entry or "mask_name" not in entry:
            raise DatasetError(path, f"{where} needs 'img_name' and 'mask_name'")
        prompts = entry.get("prompts") or {}
        if prompt_level not in prompts:
            raise DatasetError(path, f"{where} ({entry['img_name']}) has no prompt '{prompt_level}'; has {sorted(prompts)}")
        text = prompts[prompt_level]
        texts = [t for t in (text if isinstance(text, list) else [text]) if isinstance(t, str) and t.strip()]
        if not texts:
            raise DatasetError(path, f"{where} ({entry['img_name']}) has an empty prompt '{prompt_level}'")
        image, mask = image_dir / entry["img_name"], mask_dir / entry["mask_name"]
        if not image.is_file():
            raise DatasetError(path, f"{where}: image {image} does not exist")
        if not mask.is_file():
            raise DatasetError(path, f"{where}: mask {mask} does not exist")
        records.append({
            "image": str(image), "label": str(mask), "name": image.stem,
            "text": texts if isinstance(text, list) else texts[0],
        })
    return records

