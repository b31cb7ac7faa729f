"""Real Kvasir-SEG with Poudel et al.'s prompts, from two public git checkouts, in the layout the reader takes.

    git clone https://github.com/ViniciusSimm/Colo-Retal-Induscon2023 && git -C Colo-Retal-Induscon2023 checkout c5846892
    git clone https://github.com/naamiinepal/medvlsm
    python scripts/prepare_kvasir.py --kvasir Colo-Retal-Induscon2023 --prompts medvlsm --out_dir /data/Kvasir-SEG
    python scripts/prepare_kvasir.py --kvasir Colo-Retal-Induscon2023 --prompts medvlsm --out_dir /data/Kvasir-SEG-352 --size 352

``--kvasir``: the checkout holding ``datasets/Kvasir-SEG/{images,masks}`` (1000 polyp images and masks,
original sizes), or a folder holding ``images/`` and ``masks/``. ``--prompts``: the checkout holding
``data/kvasir_polyp/anns/{train,val,test}.json`` (Poudel et al.'s prompts, the 800/100/100 split), or a
folder holding those three files.

Writes ``<out_dir>/images``, ``<out_dir>/masks`` and ``<out_dir>/anns/{train,val,test}.json`` (the records
as published); train on it with ``--dataset_format kvasir --dataset_dir <out_dir>``. Files are hard-linked
when the checkout is on the same disk, else copied. ``--size N`` writes a smaller copy instead, each image
resized so its longer side is N (bicubic; aspect kept) and each mask to the same size (nearest, written as
a 0/255 PNG so JPEG artefacts do not blur the binary mask; the records' ``mask_name`` follow): small enough
to carry to another machine. Nothing of the data belongs in this repository.

Every record's image and mask must exist (the error names the split file, the record and the missing file);
images no split uses are counted. ``out_dir`` must be new or empty (``--overwrite true`` replaces what an
earlier run wrote there); the copy is written beside it and takes its name only when complete, so a failed
run leaves nothing behind.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import json
import os
import shutil
from pathlib import Path


from transforms.base.describe import typed
from transforms.base.errors import DatasetError
from common.core.flags import check_range
from common.data.file_reading import read_image, read_json
from common.data.output_folder import staged_folder

SPLITS = ("train", "val", "test")
LAST_WRITTEN = "anns/test.json"  # a folder holding it is an earlier run's (runs appear only when complete)


def _find(root: Path, candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    raise DatasetError(root, f"no {what} here; looked for {', '.join(str(c.relative_to(root)) for c in candidates)}")


def kvasir_folder(root: str | Path) -> Path:
    root = Path(root)
    folder = _find(root, [root / "datasets" / "Kvasir-SEG", root / "Kvasir-SEG", root], "Kvasir-SEG images/ and masks/")
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise DatasetError(folder, f"has no {sub}/ folder (expected Kvasir-SEG's images/ and masks/)")
    return folder


def prompt_folder(root: str | Path) -> Path:
    root = Path(root)
    folder = _find(root, [root / "data" / "kvasir_polyp" / "anns", root / "kvasir_polyp" / "anns", root / "anns", root],
                   "Poudel et al.'s kvasir_polyp prompt files")
    missing = [s for s in SPLITS if not (folder / f"{s}.json").is_file()]
    if missing:
        raise DatasetError(folder, f"has no {', '.join(m + '.json' for m in missing)}")
    return folder


def read_split(path: Path, images: Path, masks: Path) -> list[dict]:
    records = read_json(path)
    if not isinstance(records, list) or not records:
        raise DatasetError(path, "expected a non-empty JSON list of records")
    for n, record in enumerate(records):
        for key, folder in (("img_name", images), ("mask_name", masks)):
            name = record.get(key) if isinstance(record, dict) else None
            if not name:
                raise DatasetError(path, f"record {n} has no {key}")
            if not (folder / name).is_file():
                raise DatasetError(path, f"record {n} ({record.get('img_name')}): {folder / name} does not exist")
    return records


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another disk, or links not allowed
        shutil.copy2(source, target)


def _resized(source: Path, target: Path, size: int, mask: bool) -> None:
    from PIL import Image

    img = read_image(source, "L" if mask else "RGB")
    scale = size / max(img.size)
    shape = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if mask:
        binary = img.point(lambda v: 255 if v > 127 else 0)
        binary.resize(shape, Image.NEAREST).save(target)
    else:
        img.resize(shape, Image.BICUBIC).save(target, quality=95)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(kvasir: str, prompts: str, out_dir: str, size: int | None = None, overwrite: bool = False,
         progress_bar: bool = True) -> str:
    """Write the reader's layout (see the module doc); returns ``out_dir``."""
    if size is not None:
        check_range("size", size, 1)
    source = kvasir_folder(kvasir)
    images, masks = source / "images", source / "masks"
    anns = prompt_folder(prompts)
    splits = {s: read_split(anns / f"{s}.json", images, masks) for s in SPLITS}
    out = Path(out_dir)
    with staged_folder(out, overwrite, written_by=LAST_WRITTEN) as folder:
        write_copy(splits, images, masks, folder, size, progress_bar)
    used = {r["img_name"] for records in splits.values() for r in records}
    unused = sorted(p.name for p in images.iterdir() if p.is_file() and p.name not in used)
    counts = {s: len(r) for s, r in splits.items()}
    print(f"Kvasir-SEG: {counts} records written to {out}" + (f" (images resized to a longer side of {size})" if size else "")
          + (f"; {len(unused)} image(s) of {images} are in no split" if unused else ""))
    print(f"train on it: --dataset_format kvasir --dataset_dir {out} --prompt_level p6")
    return str(out) if __name__ != "__main__" else None


def write_copy(splits: dict[str, list[dict]], images: Path, masks: Path, out: Path, size: int | None,
               progress_bar: bool = True) -> None:
    """The images, masks and ``anns/{split}.json`` of ``splits`` in ``out`` (linked, copied, or resized to ``size``)."""
    from tqdm import tqdm

    for sub in ("images", "masks", "anns"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        written = []
        for record in tqdm(records, desc=split, disable=not progress_bar):
            record = dict(record)
            if size:
                mask_name = Path(record["mask_name"]).with_suffix(".png").name
                _resized(images / record["img_name"], out / "images" / record["img_name"], int(size), mask=False)
                _resized(masks / record["mask_name"], out / "masks" / mask_name, int(size), mask=True)
                record["mask_name"] = mask_name
            else:
                _place(images / record["img_name"], out / "images" / record["img_name"])
                _place(masks / record["mask_name"], out / "masks" / record["mask_name"])
            written.append(record)
        (out / "anns" / f"{split}.json").write_text(json.dumps(written))


if __name__ == "__main__":
    _repo.run_cli(main)
