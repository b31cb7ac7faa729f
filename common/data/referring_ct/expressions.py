"""Referring expressions from lesion attributes (size rank, side, diameter)."""

from __future__ import annotations

RANK_WORDS = ("largest", "second largest", "third largest", "fourth largest", "fifth largest")


def referring_expression(lesion: dict) -> str:
    """Three attribute phrases: size rank, side, diameter (the partial-text evaluation keeps the first ones)."""
    count, rank = lesion["count"], lesion["rank"]
    if count == 1:
        which = "the only lesion in this slice"
    elif rank == count - 1:
        which = f"the smallest of {count} lesions in this slice"
    else:
        word = RANK_WORDS[rank] if rank < len(RANK_WORDS) else f"number {rank + 1} by size"
        which = f"the {word} of {count} lesions in this slice"
    return f"{which}, on the patient's {lesion['side']} side, {lesion['diameter_mm']:.1f} mm in diameter"

