"""The referring-lesion record and its reader.

RefHL-Seg (the LSMS paper's dataset) is not public, so we define its record and a tool that makes
such a dataset from any CT volume with a lesion-label volume (:mod:`.builder`).

Record (one JSON object per line of ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``; paths
relative to the file)::

    {"image": "images/case_000_z012.png" | "ct/case_000.nii.gz",
     "slice": 12,                      # axial index in the RAS-oriented volume
     "mask": "labels/case_000_z012.png" | "labels/case_000.nii.gz",
     "lesion_id": 2,                   # the value of the referred lesion in the mask
     "text": "the largest of 3 lesions in this slice, on the patient's right side, 27.5 mm in diameter",
     "case": "case_000", ...}          # extra fields are kept

A 2-D ``image`` (PNG written by the builder) is already windowed and shown in radiological
orientation (patient's right on the image's left, anterior up); a 3-D ``image`` is windowed and
oriented the same way when it is loaded (:class:`transforms.referring.LoadReferringSliced`).
Either way the mask is the lesion-id map of that slice and the target is ``mask == lesion_id``.
"""

from __future__ import annotations

from pathlib import Path

from transforms.base.errors import DatasetError
from common.data.file_reading import read_json_lines
from common.data.files import IMAGE_SUFFIXES

REQUIRED_KEYS = ("image", "mask", "lesion_id", "text")


def referring_datalist(dataset_dir: str | Path, split: str) -> list[dict]:
    """Records of ``<dataset_dir>/<split>.jsonl`` (or a JSONL file itself) with absolute paths.

    Each record gets ``label`` (the mask path, the key the bundles' transforms use)
    and ``name``; a missing key, a missing file or a bad ``slice``/``lesion_id`` raises.
    """
    path = Path(dataset_dir)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(path, f"no {split} split: expected a JSONL file of referring records (set --dataset_dir "
                                 "to the folder scripts/build_referring_ct.py wrote)")
    records = []
    for n, entry in read_json_lines(path):
        if not isinstance(entry, dict):
            raise DatasetError(path, f"line {n} is not a record of named fields: {entry!r}")
        missing = [k for k in REQUIRED_KEYS if entry.get(k) in (None, "")]
        if missing:
            raise DatasetError(path, f"line {n} has no {missing}")
        rec = dict(entry)
        for key in ("image", "mask"):
            p = Path(rec[key])
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise DatasetError(path, f"line {n}: {key} {p} does not exist")
            rec[key] = str(p)
        try:
            rec["lesion_id"] = int(rec["lesion_id"])
            rec["slice"] = None if rec.get("slice") is None else int(rec["slice"])
        except (TypeError, ValueError) as err:
            raise DatasetError(path, f"line {n}: lesion_id and slice must be integers ({err})") from err
        rec["label"] = rec["mask"]
        rec.setdefault("name", f"{Path(rec['image']).name.split('.')[0]}_lesion{rec['lesion_id']}")
        records.append(rec)
    if not records:
        raise DatasetError(path, "no records")
    return records


def inference_slices(records: list[dict]) -> list[dict]:
    """Records for inference where ``slice`` means "the axial index of this volume": a record whose image is a
    2-D raster (the builder's PNG slices keep the index of the volume they came from) has it moved to
    ``volume_slice``, so a mask written as NIfTI is the slice's own 2-D mask, not a volume to place it in
    (there is none: the PNG is the slice)."""
    out = []
    for record in records:
        record = dict(record)
        if record.get("slice") is not None and str(record.get("image", "")).lower().endswith(IMAGE_SUFFIXES):
            record["volume_slice"] = record.pop("slice")
        out.append(record)
    return out
