"""Answers of a segmentation assistant (LISA, GSVA, LTSE): which target each [SEG] / [REJ] stands for.

An instruction names targets t_1..t_T (tissue classes); each is present in the image or not.
The answer gives one *slot* per target, in the instruction's order:

    multi_seg, use_rej    "Sure, tumor [SEG], necrosis [REJ], stroma [SEG]."   (LTSE)
    multi_seg, no [REJ]   "Sure, tumor [SEG], necrosis [SEG], stroma [SEG]."   absent -> empty mask
    single [SEG]          "Sure, tumor, necrosis, stroma [SEG]."               union of present targets
    single, all absent    "Sure, tumor, necrosis, stroma [REJ]."               (no [SEG] at all)

So the k-th slot belongs to the k-th target (multi_seg), and the k-th [SEG] to the k-th target
whose slot is a [SEG]. [REJ] slots have no mask and no mask loss. At most ``max_seg_tokens``
(M = 10) [SEG] per answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

SEG_TOKEN = "[SEG]"
REJ_TOKEN = "[REJ]"


def special_tokens(use_rej: bool = True) -> list[str]:
    """The tokens LTSE adds to the vocabulary (``LlavaLM.new_tokens``)."""
    return [SEG_TOKEN, REJ_TOKEN] if use_rej else [SEG_TOKEN]


@dataclass(frozen=True)
class Slot:
    """One [SEG] or [REJ] of an answer and the indices of the targets it stands for."""

    token: str
    targets: tuple[int, ...]


def answer_slots(present: Sequence[bool], multi_seg: bool = True, use_rej: bool = True,
                 max_seg_tokens: int = 10) -> list[Slot]:
    """The answer's slots for targets with these present/absent flags (module doc)."""
    if not present:
        raise ValueError("an instruction needs at least one target")
    if not multi_seg:
        found = tuple(i for i, p in enumerate(present) if p)
        token = SEG_TOKEN if found or not use_rej else REJ_TOKEN
        return [Slot(token, found if token == SEG_TOKEN else tuple(range(len(present))))]
    slots = [Slot(SEG_TOKEN if p or not use_rej else REJ_TOKEN, (i,)) for i, p in enumerate(present)]
    n_seg = sum(s.token == SEG_TOKEN for s in slots)
    if n_seg > max_seg_tokens:
        raise ValueError(f"the answer would need {n_seg} [SEG] tokens but LTSE supports at most "
                         f"max_seg_tokens={max_seg_tokens}; split the instruction into fewer targets")
    return slots


def build_answer(targets: Sequence[str], present: Sequence[bool], multi_seg: bool = True, use_rej: bool = True,
                 max_seg_tokens: int = 10) -> tuple[str, list[Slot]]:
    """The answer text for named targets, and its slots (module doc)."""
    if len(targets) != len(present):
        raise ValueError(f"{len(targets)} targets but {len(present)} present/absent flags")
    slots = answer_slots(present, multi_seg, use_rej, max_seg_tokens)
    if multi_seg:
        parts = [f"{targets[s.targets[0]]} {s.token}" for s in slots]
    else:
        parts = [", ".join(targets) + f" {slots[0].token}"]
    return "Sure, " + ", ".join(parts) + ".", slots


def seg_targets(slots: Sequence[Slot]) -> list[tuple[int, ...]]:
    """For the k-th [SEG] of the answer, the targets whose union it segments."""
    return [s.targets for s in slots if s.token == SEG_TOKEN]


def seg_target_masks(target_masks: torch.Tensor, slots: Sequence[Slot]) -> torch.Tensor:
    """Ground truth per [SEG]: (T, H, W) target masks -> (n_seg, H, W), the union of each [SEG]'s targets.

    [REJ] slots contribute nothing; a [SEG] with no target (single [SEG] without [REJ], nothing
    present) gets an empty mask.
    """
    masks = target_masks > 0
    rows = [masks[list(t)].any(dim=0) if t else torch.zeros_like(masks[0]) for t in seg_targets(slots)]
    if not rows:
        return target_masks.new_zeros((0, *target_masks.shape[1:]), dtype=torch.float32)
    return torch.stack(rows).float()


def slot_tokens(token_ids: Sequence[int] | torch.Tensor, seg_id: int, rej_id: int | None) -> list[str]:
    """The [SEG] / [REJ] tokens of a (generated) answer, in order."""
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    names = {seg_id: SEG_TOKEN} | ({rej_id: REJ_TOKEN} if rej_id is not None else {})
    return [names[i] for i in ids if i in names]


_SLOT = re.compile(r"([^,.;:\[\]]*)(\[SEG\]|\[REJ\])")
_LEAD = re.compile(r"^(?:sure|yes|ok(?:ay)?|and|the)\b[\s,]*", re.IGNORECASE)


def slot_phrases(answer: str) -> list[tuple[str, str]]:
    """``(phrase, token)`` for each [SEG] / [REJ] of an answer's text, in order: the words just before the
    token ("Sure, tumor [SEG], necrosis [REJ]." -> [("tumor", "[SEG]"), ("necrosis", "[REJ]")]); a token with
    no words before it (", [SEG]") gets "". What a person reads next to the k-th mask."""
    out = []
    for words, token in _SLOT.findall(answer):
        phrase = words.strip()
        while _LEAD.match(phrase):
            stripped = _LEAD.sub("", phrase, count=1).strip()
            if stripped == phrase:
                break
            phrase = stripped
        out.append((phrase, token))
    return out


def masks_for_targets(tokens: Sequence[str], num_targets: int, multi_seg: bool = True) -> list[int | None]:
    """For each target, the index of its predicted mask among the answer's [SEG] masks, or None.

    ``multi_seg``: slot k belongs to target k; a target whose slot is [REJ] or missing (the
    answer has fewer slots than targets) gets None (rejected: predicted empty). Single [SEG]:
    every target shares the first slot's mask (None when that slot is [REJ] or there is none).
    """
    if not multi_seg:
        first = tokens[0] if tokens else None
        return [0 if first == SEG_TOKEN else None] * num_targets
    out, n_seg = [], 0
    for k in range(num_targets):
        token = tokens[k] if k < len(tokens) else None
        out.append(n_seg if token == SEG_TOKEN else None)
        n_seg += token == SEG_TOKEN
    return out
