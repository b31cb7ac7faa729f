"""What the MONAI Label app needs to know about a bundle and its data, without MONAI Label itself.

* :class:`Serving`: a bundle's ``configs/monailabel.yaml`` (or ``.json`` in a model-zoo zip): the labels
  clients paint, the per-request fields they show (``text``, ``slice``; ``instruction`` for a bundle that
  answers in words), which task serves it (``infer_task``: ``bundle``, the bundle's pre/post-processing
  around one forward pass; ``answer``, an instruction answered with text and one mask per [SEG]), what a
  training record needs, which post-processed key is the returned label and which go into the JSON
  answer, and whether the bundle can be trained from the app (``training``: true, or why not).
* Stored texts: a client attaches them to an image in the datastore (its image info) or the studies
  folder holds ``texts.json``; both are read by :func:`entries` into records' extra fields.
* :func:`request_fields`: the ``text`` / ``slice`` of one inference request, completed from what is
  stored for a datastore image, checked (a :class:`RequestError` says what to send).
* :func:`training_records`: the datastore's labelled images as the bundle's training records.
* :func:`segment_label_map`: an answer's [SEG] masks as one label map (value k: the k-th [SEG]).
* :func:`write_prediction`: the returned label file: a PNG or NIfTI of the input's size, or for a slice of a
  CT volume a label volume of the CT's geometry with that slice filled in.

The texts file (``<studies>/texts.json``) maps an image id (its file name without the extension) to a
text, a list of texts (alternatives for the same mask: training draws one per epoch), a record
(``{"text": ..., "slice": 57, "lesion_id": 2}``) or a list of records (several targets in one volume)::

    {"img_000": "one small polyp, located in top left of the image",
     "case_003": [{"slice": 41, "lesion_id": 1, "text": "the largest of 2 lesions in this slice ..."},
                  {"slice": 57, "lesion_id": 2, "text": "the only lesion in this slice ..."}]}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

logger = logging.getLogger(__name__)

TEXTS_FILE = "texts.json"
PROMPT_FIELDS = ("text", "instruction")  # the request's words: a prompt (TMCA, LSMS) or an instruction (LTSE)
INFER_TASKS = ("bundle", "answer")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI = (".nii.gz", ".nii")


class RequestError(ValueError):
    """A request the model cannot answer as sent; the message says what to send instead."""


@dataclass
class Serving:
    """A bundle's serving declaration (``configs/monailabel.yaml``)."""

    name: str
    bundle: Path
    config_file: Path
    label_names: dict[str, int]
    infer_options: dict[str, Any] = field(default_factory=dict)
    record_requires: list[str] = field(default_factory=list)
    record_defaults: dict[str, Any] = field(default_factory=dict)
    label_key: str = "pred"                 # the post-processed record's key holding the returned label map
    result_keys: dict[str, str] = field(default_factory=dict)  # JSON answer field -> record key (e.g. instances)
    training: str | None = None             # why /train is not offered for this bundle (None: it is)
    infer_task: str = "bundle"              # "answer": instruction in, answer text + one mask per [SEG] out
    pretrained_sources: dict[str, str] = field(default_factory=dict)  # where this machine keeps left-out bases

    @property
    def needs_text(self) -> bool:
        return "text" in self.infer_options

    @property
    def prompt_fields(self) -> list[str]:
        return [f for f in PROMPT_FIELDS if f in self.infer_options]

    @property
    def takes_slice(self) -> bool:
        return "slice" in self.infer_options

    @property
    def record_fields(self) -> set[str]:
        return {"text", *self.record_requires, *self.record_defaults}


def read_serving(bundle: str | Path) -> Serving:
    """The serving declaration of the bundle folder ``bundle``; errors name the file and the field."""
    bundle = Path(bundle).resolve()
    candidates = [bundle / "configs" / f"monailabel.{ext}" for ext in ("yaml", "json")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{bundle} has no configs/monailabel.yaml (or .json): it is not a bundle this app "
                                "can serve (bundle folders: bundles/<name>, or a model-zoo zip unpacked)")
    config = (yaml.safe_load if path.suffix == ".yaml" else json.loads)(path.read_text()) or {}
    labels = config.get("label_names")
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, int) and v > 0 for v in labels.values()):
        raise ValueError(f"{path}: label_names must map each label's name to its value in the returned mask "
                         f"(integers from 1; 0 is background), got {labels!r}")
    options = config.get("infer_options") or {}
    unknown = set(options) - {*PROMPT_FIELDS, "slice"}
    if unknown:
        raise ValueError(f"{path}: infer_options may hold text, instruction and slice, not {sorted(unknown)}")
    infer_task = str(config.get("infer_task") or "bundle")
    if infer_task not in INFER_TASKS:
        raise ValueError(f"{path}: infer_task must be one of {list(INFER_TASKS)}, got {infer_task!r}")
    if infer_task == "answer" and "instruction" not in options:
        raise ValueError(f"{path}: infer_task answer takes an instruction: add instruction to infer_options")
    result_keys = config.get("result_keys") or {}
    if not isinstance(result_keys, dict) or not all(isinstance(v, str) for v in result_keys.values()):
        raise ValueError(f"{path}: result_keys must map a field of the JSON answer to a key of the post-processed "
                         f"record, got {result_keys!r}")
    training = config.get("training", True)
    sources = config.get("pretrained_sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise ValueError(f"{path}: pretrained_sources must map a pretrained source of the model (e.g. sam.checkpoint) "
                         f"to where this machine keeps it, got {sources!r}")
    return Serving(name=bundle.name, bundle=bundle, config_file=path, label_names=dict(labels),
                   infer_options=dict(options), record_requires=list(config.get("record_requires") or []),
                   record_defaults=dict(config.get("record_defaults") or {}),
                   label_key=str(config.get("label_key") or "pred"), result_keys=dict(result_keys),
                   training=None if training is True else str(training), infer_task=infer_task,
                   pretrained_sources=dict(sources))


# -------------------------------------------------------------------------------------------------
# stored texts: image info in the datastore, or <studies>/texts.json
# -------------------------------------------------------------------------------------------------
def entries(value: Any, where: str) -> list[dict]:
    """Normalise what is stored for one image into a list of record fields (see the module doc)."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [{"text": value}]
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return [{"text": list(value)}]
        if all(isinstance(v, Mapping) for v in value):
            return [dict(v) for v in value]
    raise ValueError(f"{where}: expected a text, a list of texts, a record or a list of records, got {value!r}")


def read_texts(studies: str | Path, name: str = TEXTS_FILE) -> dict[str, list[dict]]:
    """``<studies>/texts.json`` as ``{image id: [record fields, ...]}`` ({} when there is none)."""
    path = Path(studies) / name
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path} must map image ids to texts or records, got a {type(content).__name__}")
    return {str(k): entries(v, f"{path} [{k!r}]") for k, v in content.items()}


def info_entries(info: Mapping | None, serving: Serving, image_id: str) -> list[dict]:
    """Record fields a client stored in the datastore's image info: ``records`` (a list), or ``text``
    with the record's other fields (``slice``, ``lesion_id``) beside it."""
    info = info or {}
    if info.get("records"):
        return entries(info["records"], f"datastore image info of {image_id} [records]")
    if info.get("text"):
        return [{k: info[k] for k in serving.record_fields if k in info}]
    return []


def stored_entries(image_id: str, info: Mapping | None, texts: Mapping[str, list[dict]], serving: Serving) -> list[dict]:
    """The image info wins over texts.json."""
    return info_entries(info, serving, image_id) or list(texts.get(image_id, []))


# -------------------------------------------------------------------------------------------------
# one inference request
# -------------------------------------------------------------------------------------------------
def as_slice(value: Any) -> int | None:
    """A ``slice`` as sent by a client (int, "57", "" or -1 for none)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        index = int(str(value).strip())
    except ValueError:
        raise RequestError(f"slice must be an axial slice index (an integer), got {value!r}") from None
    return None if index < 0 else index


def is_volume(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(VOLUME_EXTENSIONS)


def request_fields(request: Mapping, serving: Serving, stored: list[dict]) -> dict:
    """``{"text": ..., "slice": ...}`` for one inference request of a bundle that takes them: the request's own
    values, else the first stored record's. Raises :class:`RequestError` when the model cannot run."""
    fields: dict[str, Any] = {}
    first = stored[0] if stored else {}
    for name in serving.prompt_fields:  # a stored text serves as an instruction too (texts.json holds texts)
        text = request.get(name)
        if text is None or not str(text).strip():
            text = first.get(name, first.get("text"))
        if isinstance(text, list):
            text = text[0] if text else ""
        if text is None or not str(text).strip():
            article = "an" if name[0] in "aeiou" else "a"
            raise RequestError(f"{serving.name} needs {article} {name}: send -F 'params={{\"{name}\": \"...\"}}' with the "
                               "image, or store one for the image (PUT /datastore/image/info, or texts.json in the "
                               "studies folder)")
        fields[name] = str(text)
    if serving.takes_slice:
        index = as_slice(request.get("slice"))
        if index is None:
            index = as_slice(first.get("slice"))
        image = str(request.get("image") or "")
        if index is None and is_volume(image):
            raise RequestError(f"{serving.name} segments one axial slice of a volume: send its index, "
                               "-F 'params={\"text\": \"...\", \"slice\": 57}'")
        fields["slice"] = index
    return fields


# -------------------------------------------------------------------------------------------------
# training records
# -------------------------------------------------------------------------------------------------
def training_records(labelled: Iterable[tuple[str, str, str, Mapping | None]], texts: Mapping[str, list[dict]],
                     serving: Serving) -> tuple[list[dict], dict[str, str]]:
    """``labelled``: ``(image id, image path, final label path, image info)`` per labelled image.

    Returns the records (``image``, ``label`` and the stored fields, ``record_defaults`` filled in, ``name``)
    and ``{image id: why it was left out}``.
    """
    records, left_out = [], {}
    for image_id, image, label, info in labelled:
        found = stored_entries(image_id, info, texts, serving) or ([{}] if not serving.record_requires else [])
        if not found:
            left_out[image_id] = f"no {' or '.join(serving.record_requires)} stored for it"
            continue
        for n, fields in enumerate(found):
            record = {**serving.record_defaults, **fields, "image": image, "label": label}
            missing = [k for k in serving.record_requires if record.get(k) in (None, "", [])]
            if missing:
                left_out[f"{image_id}[{n}]"] = f"its record has no {missing}"
                continue
            if "slice" in record:
                record["slice"] = as_slice(record["slice"])
            record.setdefault("name", image_id if len(found) == 1 else f"{image_id}_{n}")
            records.append(record)
    return records, left_out


def partition_by_image(records: list[dict], val_split: float) -> tuple[list[dict], list[dict]]:
    """Training and validation records, ``val_split`` of the *images* for validation (the last ones, in
    datastore order): all records of one image (the slices and lesions of a CT volume) land on the same side,
    so validation never scores a volume that training has seen."""
    from monai.data import partition_dataset

    images = list(dict.fromkeys(str(r["image"]) for r in records))
    if val_split <= 0 or not images:
        return list(records), []
    train_images, val_images = partition_dataset(images, ratios=[1 - val_split, val_split], shuffle=False)
    val_images = set(val_images)
    return ([r for r in records if str(r["image"]) not in val_images],
            [r for r in records if str(r["image"]) in val_images])


# -------------------------------------------------------------------------------------------------
# the returned label
# -------------------------------------------------------------------------------------------------
def _extension(path: str) -> str:
    name = str(path).lower()
    for ext in (*VOLUME_EXTENSIONS, ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def segment_label_map(mask_logits, threshold: float = 0.0) -> np.ndarray:
    """One label map from an answer's [SEG] masks (``(K, H, W)`` logits, or a list of K ``(H, W)``): value k
    (1..K) where the k-th [SEG]'s logit is above ``threshold`` and the highest of the masks there; 0 where no
    mask is. (Masks of different targets may overlap; a label map holds one value per pixel.)"""
    logits = [np.asarray(m.detach().float().cpu() if hasattr(m, "detach") else m, np.float32) for m in mask_logits]
    if not logits:
        raise ValueError("no masks: an answer without [SEG] has no label map")
    stack = np.stack(logits)
    label = stack.argmax(0).astype(np.uint8) + 1
    label[stack.max(0) <= threshold] = 0
    return label


def write_prediction(pred, image_path: str, out_dir: str | Path, slice_index: int | None = None,
                     extension: str | None = None, name: str | None = None) -> Path:
    """Write the post-processed prediction (``(1, H, W)`` or ``(H, W)``, label values: 0/1 or class indices,
    in the input's geometry) as the label file a client reads back.

    * a slice of a volume (``slice_index``): a label volume of the input's shape and geometry, that slice
      filled in (NIfTI for NIfTI input, the input's own format through ITK otherwise);
    * a 2-D input: a PNG (``extension`` ``.nii.gz``: a 2-D NIfTI, with the input's affine when it is one).

    The file is ``<out_dir>/<name>_label<ext>`` (``name``: the input's file name without its extension).
    """
    from transforms.volumes import slice_into_volume

    values = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
    values = np.rint(values[0] if values.ndim == 3 else values).astype(np.uint8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or Path(str(image_path)).name.split(".")[0] or "image"
    if slice_index is not None and is_volume(image_path):
        volume, affine = slice_into_volume(values, image_path, slice_index)
        ext = _extension(image_path)
        path = out_dir / f"{stem}_label{'.nii.gz' if ext in NIFTI else ext}"
        _write_volume(volume, affine, path)
        return path
    ext = (extension or "").lower()
    if ext in NIFTI:
        import nibabel as nib

        affine = nib.load(str(image_path)).affine if _extension(image_path) in NIFTI else np.eye(4)
        path = out_dir / f"{stem}_label{ext}"
        nib.save(nib.Nifti1Image(values, affine), str(path))
        return path
    from PIL import Image

    path = out_dir / f"{stem}_label.png"
    Image.fromarray(values).save(path)
    return path


def _write_volume(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    if path.name.endswith(NIFTI):
        import nibabel as nib

        nib.save(nib.Nifti1Image(volume, affine), str(path))
        return
    from monai.data import ITKWriter

    writer = ITKWriter(output_dtype=np.uint8)
    writer.set_data_array(volume, channel_dim=None)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(str(path))


def label_summary(pred, label_names: Mapping[str, int]) -> dict[str, int]:
    """Pixels of each label in the prediction (what the JSON answer reports)."""
    values = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
    return {name: int((np.rint(values) == value).sum()) for name, value in label_names.items()}
