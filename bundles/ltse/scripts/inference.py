"""LTSE inference: image + instruction -> the answer text, one mask PNG per [SEG] of the answer, an overlay.

For each record ``<name>_answer.txt``, ``<name>_seg1.png`` ... (0/255, the k-th [SEG]'s mask at the
image's size), ``<name>_overlay.png`` (instruction, answer, each mask in its own colour), and at the end
``predictions.csv`` (image, instruction, answer, [SEG]/[REJ] slots, mask files). An answer without [SEG]
writes no mask: an empty result, not an error. Names are unique within a run (two images called
``patch.png`` in different folders do not overwrite each other).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.data.datalist import file_datalist
from common.engine.inference import output_name

from .evaluation import answer_overlay


def inference_records(image: str | None = None, instruction: str | None = None,
                      datalist: str | None = None) -> list[dict]:
    """One record from ``image`` + ``instruction``, or every record of a datalist (JSON/JSONL/CSV with
    ``image`` and ``instruction``)."""
    if datalist:
        return file_datalist(datalist, required=("image", "instruction"))
    if not image:
        raise ValueError("give --image PATH and --instruction '...', or --datalist FILE with image and instruction")
    if not Path(image).is_file():
        raise FileNotFoundError(f"--image {image} does not exist")
    if instruction is None or not str(instruction).strip():
        raise ValueError(f"--instruction is empty for {image}: LTSE answers an instruction")
    return [{"image": str(image), "instruction": str(instruction)}]


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing, corrupt or truncated file raises a DatasetError naming it."""
    from transforms.geojson import read_rgb as read_rgb_checked

    return read_rgb_checked(path)


class AnswerWriter:
    """Writes each answer's files (module doc) and the ``predictions.csv`` index."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.rows: list[dict] = []
        self._names: set[str] = set()

    def write(self, image_path: str, image: np.ndarray, instruction: str, result: dict, name: str | None = None) -> dict:
        from PIL import Image

        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = name or Path(image_path).name.removesuffix(".gz").rsplit(".", 1)[0]  # keeps dots inside the name
        stem = output_name({"name": name}, image_path, self._names)
        (self.output_dir / f"{stem}_answer.txt").write_text(result["answer"] + "\n")
        masks = [np.asarray(m.cpu().numpy(), np.uint8) for m in result["masks"]]
        files = []
        for k, mask in enumerate(masks, start=1):
            path = self.output_dir / f"{stem}_seg{k}.png"
            Image.fromarray(mask * 255).save(path)
            files.append(path.name)
        answer_overlay(image, masks, result["tokens"], instruction, result["answer"]).save(
            self.output_dir / f"{stem}_overlay.png")
        row = {"image": image_path, "instruction": instruction, "answer": result["answer"],
               "slots": " ".join(result["tokens"]), "masks": " ".join(files), "overlay": f"{stem}_overlay.png",
               "mask_pixels": " ".join(str(int(m.sum())) for m in masks), "cut": bool(result.get("cut", False))}
        self.rows.append(row)
        return row

    def write_index(self) -> Path:
        """``predictions.csv`` of every answer so far, replaced in one rename (never half-written)."""
        path = self.output_dir / "predictions.csv"
        partial = path.with_name(f".{path.name}.part")
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "instruction", "answer", "slots", "masks", "overlay",
                                                   "mask_pixels", "cut"])
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(partial, path)
        return path


def run_inference(network, records: Sequence[dict], output_dir: str, max_new_tokens: int = 64,
                  threshold: float = 0.0, device=None, progress: bool = True) -> Path:
    """Answer and segment every record; returns the ``predictions.csv`` it wrote."""
    from tqdm import tqdm

    if device is not None:
        network.to(device)
    writer = AnswerWriter(output_dir)
    for record in tqdm(records, desc="infer", disable=not progress or len(records) < 2):
        image = read_rgb(record["image"])
        result = network.generate(torch.as_tensor(image).permute(2, 0, 1), record["instruction"],
                                  max_new_tokens=max_new_tokens, threshold=threshold)
        row = writer.write(record["image"], image, record["instruction"], result, record.get("name"))
        print(f"{record['image']}: {row['answer']!r} -> {len(result['masks'])} mask(s)")
    index = writer.write_index()
    print(f"answers, masks and overlays of {len(records)} instruction(s) in {Path(output_dir).resolve()} "
          f"(index: {index.name})")
    return index
