"""LTSE's inputs: one referring record -> fixed-size tensors (so MONAI's default collate batches them), and
the batch -> the network's keyword arguments and the loss's targets.

Per record (:class:`LTSEInputsd`):

    pixel_values   (3, h, w)          LLaVA's CLIP pixels (its processor)
    sam_image      (3, S, S)          SAM's input (longest side S, pixel mean/std, zero pad)
    resize_size    (2,)               the resized image inside the SAM frame
    original_size  (2,)               the image's own (H, W)
    input_ids, attention_mask, labels (max_text_tokens,)  prompt + answer (labels -100 off the answer)
    prompt_length  ()                 tokens of the prompt alone (generation starts after it)
    target_masks   (max_targets, S, S) uint8, each target's ground truth in the SAM frame (rows past
                                      ``num_targets`` empty); with ``full_size_targets`` also
                                      ``target_masks_full`` (max_targets, H, W) for scoring at the image's size
    present        (max_targets,)     whether each target occurs in the image
    num_targets    ()

Text is never cut: a conversation longer than ``max_text_tokens`` stops with an error naming the record.
The answer is the record's own when the switches are the paper's (``multi_seg`` and ``use_rej``) and its
[SEG]/[REJ] slots match the targets; the Table 2 ablations build their answer from the targets
(``common.data.seg_answers.build_answer``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from transforms.base.describe import configurable
from transforms.base.errors import DatasetError
from common.data.bcss.reader import phrase
from common.data.seg_answers import answer_slots, build_answer, seg_target_masks, slot_phrases
from common.networks.llava import IGNORE_INDEX, tokenize_conversation
from common.networks.sam import sam_preprocess

NETWORK_INPUTS = ("sam_images", "input_ids", "attention_mask", "labels", "resize_sizes", "original_sizes")


def _read(path: str, record: str, rgb: bool):
    """An image as (H, W, 3) uint8 (grey and palette images converted), or a mask of class codes as (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if rgb:
                return np.asarray(im.convert("RGB"))
            return np.asarray(im if im.mode in ("L", "I", "I;16", "P") else im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DatasetError(path, f"cannot be read ({err}); record {record}") from None


class LTSEInputsd:
    """Record (``image``, ``mask``, ``instruction``, ``targets``, ``codes``, ``answer``) -> tensors (module doc).

    Args:
        network: the LTSE whose inputs these are: its LLaVA processor and conversation template, SAM's input
            size, the answer's form (``multi_seg``, ``use_rej``) and M (``max_seg_tokens``) come from it (only
            those are kept: workers never receive the network).
        max_text_tokens: every conversation is padded to this length; a longer one raises.
        with_answer: tokenize the answer after the prompt (training); False: the prompt only.
        full_size_targets: also keep the targets at the image's own size (evaluation).
    """

    def __init__(self, network, max_text_tokens: int = 768, with_answer: bool = True, full_size_targets: bool = False):
        net = getattr(network, "module", network)
        self.processor = net.llava.processor
        self.template = net.llava.prompt_template
        self.sam_image_size, self.max_text_tokens = int(net.sam.image_size), int(max_text_tokens)
        self.max_targets = int(net.max_seg_tokens)
        self.multi_seg, self.use_rej, self.with_answer = net.multi_seg, net.use_rej, with_answer
        self.full_size_targets = full_size_targets

    def answer(self, record: Mapping, present: Sequence[bool]) -> str:
        """The answer to train on: the record's own, checked slot by slot against its targets (the k-th slot
        names the k-th target with the token its mask calls for), or built from the targets."""
        targets = list(record["targets"])
        names = [phrase(t) for t in targets]
        built, slots = build_answer(names, present, self.multi_seg, self.use_rej, self.max_targets)
        given = record.get("answer")
        if not (self.multi_seg and self.use_rej and given):
            return built
        found = slot_phrases(given)
        expected = [(names[s.targets[0]], s.token) for s in slots]
        normal = lambda pairs: [(" ".join(p.lower().split()), t) for p, t in pairs]  # noqa: E731
        if normal(found) != normal(expected):
            raise DatasetError(record.get("record"), f"answer {given!r} reads {found} but its targets {targets} "
                                                     f"(present: {list(present)}) need {expected}: the k-th slot "
                                                     "names the k-th target (leave 'answer' out to have it built)")
        return given

    def __call__(self, data: Mapping) -> dict:
        where = data.get("record", data.get("image"))
        image = _read(data["image"], where, rgb=True)
        mask = _read(data["mask"], where, rgb=False)
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise DatasetError(data["mask"], f"mask of shape {mask.shape} for an image of {image.shape[:2]}; "
                                             f"record {where}")
        if data.get("class_codes") is not None:
            unknown = sorted(set(np.unique(mask).tolist()) - set(data["class_codes"]))
            if unknown:
                raise DatasetError(data["mask"], f"record {where}: class codes {unknown} are not in the class table "
                                                 f"(codes {sorted(data['class_codes'])})")
        codes = list(data["codes"])
        if len(codes) > self.max_targets:
            raise DatasetError(data["image"], f"record {where}: {len(codes)} targets, more than max_targets="
                                              f"{self.max_targets}")
        targets = np.stack([mask == c for c in codes])
        present = [bool(t.any()) for t in targets]
        answer = self.answer(data, present) if self.with_answer else None
        batch = tokenize_conversation(self.processor, [image], [data["instruction"]],
                                      None if answer is None else [answer], template=self.template)
        length = int(batch["attention_mask"].sum())
        if length > self.max_text_tokens:
            raise DatasetError(data["image"], f"record {where}: prompt and answer take {length} tokens, more than "
                                              f"max_text_tokens={self.max_text_tokens}; raise max_text_tokens "
                                              "(texts are never cut)")
        pad = self.max_text_tokens - length
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = self.processor.tokenizer.eos_token_id if pad_id is None else pad_id
        labels = batch["labels"][0]
        prompt_length = length if answer is None else int((labels == IGNORE_INDEX).sum())
        rgb = torch.as_tensor(image).permute(2, 0, 1)
        sam_image, resize = sam_preprocess(rgb, self.sam_image_size)
        frame = torch.zeros((self.max_targets, self.sam_image_size, self.sam_image_size), dtype=torch.uint8)
        if len(codes):
            resized = torch.nn.functional.interpolate(torch.as_tensor(targets)[None].float(), size=resize,
                                                      mode="nearest")[0]
            frame[: len(codes), : resize[0], : resize[1]] = resized.to(torch.uint8)
        out = {
            "pixel_values": batch["pixel_values"][0],
            "sam_image": sam_image,
            "resize_size": torch.tensor(resize),
            "original_size": torch.tensor(image.shape[:2]),
            "input_ids": torch.nn.functional.pad(batch["input_ids"][0], (0, pad), value=pad_id),
            "attention_mask": torch.nn.functional.pad(batch["attention_mask"][0], (0, pad)),
            "labels": torch.nn.functional.pad(labels, (0, pad), value=IGNORE_INDEX),
            "prompt_length": torch.tensor(prompt_length),
            "target_masks": frame,
            "present": torch.tensor(present + [False] * (self.max_targets - len(codes))),
            "num_targets": torch.tensor(len(codes)),
            "instruction": data["instruction"],
            "targets": "|".join(data["targets"]),
            "magnification": str(data.get("magnification", "")),
            "image_path": str(data["image"]),
        }
        if self.full_size_targets:
            full = np.zeros((self.max_targets, *image.shape[:2]), np.uint8)
            full[: len(codes)] = targets
            out["target_masks_full"] = torch.as_tensor(full)
        return out


@configurable
class LTSEPrepareBatch:
    """A collated batch -> (pixel_values, targets, (), network keyword arguments).

    Text is trimmed to the batch's longest conversation. Masks are scored in the resized frame (the
    SAM input without padding) in training; ``targets`` holds, per sample, ``seg_masks`` (n_seg, h, w),
    one ground truth per answer [SEG] (``seg_target_masks``), and for evaluation ``target_masks``
    (T, h, w) and ``present`` (T,), with the image-size truth when the batch has it.

    Args:
        multi_seg, use_rej: the answer's form (which targets each [SEG] stands for).
    """

    def __init__(self, multi_seg: bool = True, use_rej: bool = True):
        self.multi_seg, self.use_rej = multi_seg, use_rej

    def __call__(self, batch, device=None, non_blocking: bool = False, **kwargs):
        def move(x):
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
            return x.to(device=device, non_blocking=non_blocking)

        length = int(batch["attention_mask"].sum(1).max())
        resize = [tuple(int(v) for v in s) for s in batch["resize_size"]]
        full = "target_masks_full" in batch
        seg_masks, target_masks, present = [], [], []
        for b in range(len(resize)):
            n = int(batch["num_targets"][b])
            frame = batch["target_masks_full"][b, :n] if full else batch["target_masks"][b, :n, : resize[b][0], : resize[b][1]]
            flags = [bool(p) for p in batch["present"][b, :n]]
            slots = answer_slots(flags, self.multi_seg, self.use_rej, max_seg_tokens=max(n, 1))
            seg_masks.append(move(seg_target_masks(frame, slots)))
            target_masks.append(move(frame.bool()))
            present.append(flags)
        output_sizes = [tuple(int(v) for v in s) for s in batch["original_size"]] if full else resize
        kwargs = {
            "sam_images": move(batch["sam_image"]),
            "input_ids": move(batch["input_ids"][:, :length]),
            "attention_mask": move(batch["attention_mask"][:, :length]),
            "labels": move(batch["labels"][:, :length]),
            "resize_sizes": resize,
            "original_sizes": output_sizes,
            "prompt_lengths": [int(v) for v in batch["prompt_length"]],
        }
        targets = {"seg_masks": seg_masks, "target_masks": target_masks, "present": present,
                   "magnification": list(batch.get("magnification", [""] * len(resize))),
                   "instruction": list(batch["instruction"]), "targets": list(batch["targets"]),
                   "image_path": list(batch["image_path"])}
        return move(batch["pixel_values"]), targets, (), kwargs


@configurable
class LTSEInferer:
    """Training: the teacher-forced pass (``LTSE.forward``). Evaluation, both protocols of
    ``evaluation.py``: the model answers each prompt itself (greedy) and segments each [SEG] of its answer
    (``LTSE.answer_and_segment``, ``generated``); and, when the batch holds the ground-truth answer
    (``LTSEInputsd(with_answer=True)``), GSVA's teacher-forced slots (``LTSE.teacher_forced_slots``, ``forced``).

    Args:
        max_new_tokens: answer length limit when generating.
        threshold: mask logit threshold.
        teacher_forced: also run GSVA's teacher-forced pass (False: ``forced`` is None).
    """

    def __init__(self, max_new_tokens: int = 64, threshold: float = 0.0, teacher_forced: bool = True):
        self.max_new_tokens, self.threshold, self.teacher_forced = max_new_tokens, threshold, teacher_forced

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        net = getattr(network, "module", network)
        if network.training:
            return network(inputs, *args, **{k: kwargs[k] for k in NETWORK_INPUTS})
        results, forced = [], []
        for b in range(inputs.shape[0]):
            prompt_length = kwargs["prompt_lengths"][b]
            prompt = kwargs["input_ids"][b, :prompt_length][None]
            results.append(net.answer_and_segment(
                prompt, inputs[b: b + 1], kwargs["sam_images"][b], kwargs["resize_sizes"][b],
                kwargs["original_sizes"][b], self.max_new_tokens, self.threshold))
            length = int(kwargs["attention_mask"][b].sum())
            if self.teacher_forced and length > prompt_length:  # the batch holds the ground-truth answer
                forced.append(net.teacher_forced_slots(
                    kwargs["input_ids"][b, :length][None], inputs[b: b + 1], kwargs["sam_images"][b],
                    kwargs["resize_sizes"][b], kwargs["original_sizes"][b], prompt_length, self.threshold))
        return {"generated": results, "forced": forced if len(forced) == len(results) else None}
