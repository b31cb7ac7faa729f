"""Referring expressions from lesion attributes (size rank, side, diameter), whole or with attributes dropped.

The full expression has three comma-separated attribute phrases: size rank, side, diameter. LSMS's partial-text
rows, "(1/2)" and "(1/4)", are made as the paper makes them ("omitting portions such as size or shape
descriptions"): whole attributes are dropped, size first. With three attributes the fractions are nominal:

* ``half`` keeps the size rank and the side (the diameter is dropped);
* ``quarter`` keeps the side only (size rank and diameter dropped).

The builder writes them into each record as ``text_half`` and ``text_quarter``; the evaluation's ``half`` and
``quarter`` text modes read them (:class:`transforms.text.ShuffleTexts`).
"""

from __future__ import annotations

RANK_WORDS = ("largest", "second largest", "third largest", "fourth largest", "fifth largest")
ATTRIBUTES = ("rank", "side", "diameter")
PARTIAL_ATTRIBUTES = {"half": ("rank", "side"), "quarter": ("side",)}
ATTRIBUTE_NAMES = {"rank": "size rank", "side": "side", "diameter": "diameter"}


def _rank_phrase(lesion: dict) -> str:
    count, rank = lesion["count"], lesion["rank"]
    if count == 1:
        return "the only lesion in this slice"
    if rank == count - 1:
        return f"the smallest of {count} lesions in this slice"
    word = RANK_WORDS[rank] if rank < len(RANK_WORDS) else f"number {rank + 1} by size"
    return f"the {word} of {count} lesions in this slice"


def referring_expression(lesion: dict, keep=ATTRIBUTES) -> str:
    """The attribute phrases named in ``keep`` (size rank, side, diameter: all by default), in that order."""
    unknown = set(keep) - set(ATTRIBUTES)
    if unknown or not keep:
        raise ValueError(f"keep must name some of {ATTRIBUTES}, got {tuple(keep)}")
    phrases = [_rank_phrase(lesion) if "rank" in keep else "a lesion in this slice"]
    if "side" in keep:
        phrases.append(f"on the patient's {lesion['side']} side")
    if "diameter" in keep:
        phrases.append(f"{lesion['diameter_mm']:.1f} mm in diameter")
    return ", ".join(phrases)


def partial_expressions(lesion: dict) -> dict[str, str]:
    """``{"text_half": ..., "text_quarter": ...}``: the expression with whole attributes dropped."""
    return {f"text_{mode}": referring_expression(lesion, kept) for mode, kept in PARTIAL_ATTRIBUTES.items()}


def partial_text_note(records) -> str:
    """One line naming what the evaluation's partial-text rows keep for ``records``."""
    if records and all(r.get("text_half") and r.get("text_quarter") for r in records):
        rows = "; ".join(f"{mode} keeps the {' and '.join(ATTRIBUTE_NAMES[a] for a in kept)}"
                         for mode, kept in PARTIAL_ATTRIBUTES.items())
        return f"partial texts (LSMS (1/2), (1/4)), whole attributes dropped: {rows} (of size rank, side, diameter)"
    return ("partial texts (LSMS (1/2), (1/4)): these records carry no text_half/text_quarter (built before "
            "they were added, or not built by scripts/build_referring_ct.py): the first 1/2 and 1/4 of the words")
