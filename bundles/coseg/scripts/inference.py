"""Co-Seg inference outputs: per ROI the tissue map, the nuclei instances (map and GeoJSON), an overlay.

Per input image ``<name>`` (names never collide: :func:`common.engine.inference.output_name`)::

    <name>_tissue.png     uint8 tissue classes at the input's size (0 background, 1 stroma, 2 blood vessel,
                          3 tumour, 4 epidermis, 5 necrosis)
    <name>_nuclei.png     uint16 nucleus instance ids (0 background)
    <name>_nuclei.geojson the nuclei as classified polygons (QuPath: File > Import objects), with their
                          area and centroid, under the class names PUMA's evaluation reads (track 1
                          nuclei_tumor / nuclei_lymphocyte / nuclei_other, track 2 the ten nuclei_* names,
                          class-agnostic nuclei "nuclei"); the PUMA reader reads the file back, so corrected
                          nuclei can go into the training data
    <name>_overlay.png    image | prediction (tissue colours, nuclei outlined), with a legend

and ``predictions.csv`` (one row per image: files, nuclei count, tissue pixels per class).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from common.engine.inference import WriterHandler
from common.evaluation.visualize import draw_instance_outlines, overlay_classes
from transforms.geojson import read_rgb, write_features

from .outputs import nuclei_features

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def inference_records(image: str | None = None, images: str | Sequence[str] | None = None) -> list[dict]:
    """Records for ``--image`` (one ROI file) or ``--images`` (a folder of ROIs, or a list of files)."""
    if image:
        paths = [Path(str(image))]
    elif isinstance(images, (str, Path)) and Path(str(images)).is_dir():
        paths = sorted(p for p in Path(str(images)).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"--images {images} holds no {', '.join(IMAGE_EXTENSIONS)} files")
    else:
        paths = [Path(str(p)) for p in ([images] if isinstance(images, str) else list(images or []))]
    if not paths:
        raise ValueError("give --image ROI.tif, or --images a folder of ROIs")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"--image {p} does not exist")
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"--image {p}: expected one of {', '.join(IMAGE_EXTENSIONS)}")
    return [{"image": str(p), "name": p.stem} for p in paths]


class CoSegWriter(WriterHandler):
    """Handler for ``inferring``: writes the files of the module doc for every image the evaluator predicts."""

    def __init__(self, output_dir: str, tissue_classes: Sequence[str], tissue_colors: Mapping[int, Sequence[int]],
                 type_names: Sequence[str] = ()):
        super().__init__(output_dir)
        self.tissue_classes, self.tissue_colors = list(tissue_classes), dict(tissue_colors)
        self.type_names = list(type_names)

    def __call__(self, engine) -> None:
        from PIL import Image

        self.output_dir.mkdir(parents=True, exist_ok=True)
        for record, item in zip(engine.state.batch, engine.state.output):
            source = str(getattr(record.get("image"), "meta", {}).get("filename_or_obj", "")) or str(record.get("source", ""))
            name = self.name(record, source)
            tissue = np.asarray(item["tissue_map"]).astype(np.uint8).reshape(np.asarray(item["tissue_map"]).shape[-2:])
            nuclei = np.asarray(item["nuclei_map"]).astype(np.int64).reshape(tissue.shape)
            files = {"tissue_map": self.output_dir / f"{name}_tissue.png",
                     "nuclei_map": self.output_dir / f"{name}_nuclei.png",
                     "geojson": self.output_dir / f"{name}_nuclei.geojson", "overlay": self.output_dir / f"{name}_overlay.png"}
            Image.fromarray(tissue).save(files["tissue_map"])
            Image.fromarray(nuclei.astype(np.uint16)).save(files["nuclei_map"])
            features = item.get("nuclei_features")  # NucleiFeaturesd's, else made here
            if features is None:
                features = nuclei_features(nuclei, item.get("nuclei_info") or {}, self.type_names)
            write_features(files["geojson"], features)
            self.save_overlay(files["overlay"], source, tissue, nuclei, name)
            counts = np.bincount(tissue.ravel(), minlength=len(self.tissue_classes))
            self.written.append({"image": source, **{k: str(v) for k, v in files.items()},
                                 "nuclei_count": int(len(np.unique(nuclei)) - (nuclei == 0).any()),
                                 **{f"pixels_{c}": int(n) for c, n in zip(self.tissue_classes, counts)}})

    def save_overlay(self, path: Path, source: str, tissue: np.ndarray, nuclei: np.ndarray, name: str) -> None:
        from PIL import Image, ImageDraw

        rgb = read_rgb(source)
        if rgb.shape[:2] != tissue.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(tissue.shape[::-1], Image.BILINEAR))
        scale = min(8, max(1, int(np.ceil(384 / min(tissue.shape)))))  # small ROIs are enlarged to be legible
        if scale > 1:
            rgb = np.kron(rgb, np.ones((scale, scale, 1), np.uint8))
            tissue, nuclei = (np.kron(a, np.ones((scale, scale), a.dtype)) for a in (tissue, nuclei))
        pred = draw_instance_outlines(overlay_classes(rgb, tissue, self.tissue_colors, alpha=0.3), nuclei)
        h, w = rgb.shape[:2]
        legend = [(c, cls) for c, cls in enumerate(self.tissue_classes) if c > 0]
        per_row = max(1, (2 * w) // 120)
        rows = -(-len(legend) // per_row)
        canvas = Image.new("RGB", (2 * w + 4, h + 16 * rows + 20), (255, 255, 255))
        canvas.paste(Image.fromarray(rgb), (0, 0))
        canvas.paste(Image.fromarray(pred), (w + 4, 0))
        draw = ImageDraw.Draw(canvas)
        for k, (c, cls) in enumerate(legend):
            x, y = 3 + (k % per_row) * 120, h + 4 + 16 * (k // per_row)
            draw.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(self.tissue_colors.get(c, (0, 0, 0))))
            draw.text((x + 14, y), cls, fill=(0, 0, 0))
        draw.text((3, h + 4 + 16 * rows), f"{name}: image | tissue classes, nuclei outlined", fill=(0, 0, 0))
        canvas.save(path)

    def report(self, engine) -> None:
        self.write_index()
        print(f"wrote tissue maps, nuclei instance maps and GeoJSON for {len(self.written)} image(s) to "
              f"{self.output_dir} (index: predictions.csv)")
