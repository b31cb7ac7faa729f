import os

import pytest
import torch

from transforms.base.errors import PretrainedWeightsError
from common.networks.image_encoders import TimmFeatureEncoder
from transforms.base.pretrained import resolve_hf_model
from common.networks.text_encoders import HFTextEncoder, masked_mean
from tests.conftest import MINILM


def test_packaged_minilm_resolves_to_a_local_folder():
    path = resolve_hf_model("text_encoder", MINILM)
    assert os.path.isfile(os.path.join(path, "config.json"))


def test_minilm_features_average_the_last_three_layers(text_encoder, tokenizer):
    ids, mask = tokenizer.tokenize(["bilateral pulmonary infection, two infected areas", "one polyp"])
    feats = text_encoder(ids, mask)
    assert feats.shape == (2, 16, 384)
    out = text_encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    manual = torch.stack(out.hidden_states[-3:]).mean(0)
    assert torch.allclose(feats, manual, atol=1e-5)
    # real pretrained weights: related sentences are closer than unrelated ones
    ids2, mask2 = tokenizer.tokenize(["a lung infection in both lungs", "a small polyp"])
    g = torch.nn.functional.normalize(masked_mean(text_encoder(ids2, mask2), mask2), dim=-1)
    f = torch.nn.functional.normalize(masked_mean(feats, mask), dim=-1)
    assert (f[0] @ g[0]) > (f[0] @ g[1])


def test_frozen_encoder_caches_repeated_texts(tokenizer):
    enc = HFTextEncoder(MINILM, num_layers_to_average=1, cache_size=8)
    calls = []
    original = enc._encode
    enc._encode = lambda i, m: calls.append(i.shape[0]) or original(i, m)
    ids, mask = tokenizer.tokenize(["left lung", "right lung", "left lung"])
    first = enc(ids, mask)
    again = enc(ids, mask)
    assert calls == [2]  # two distinct texts, encoded once
    assert torch.equal(first, again)
    assert torch.allclose(first[0], first[2])
    enc.train()
    assert not enc.model.training  # frozen stays in eval mode (no dropout)


def test_trainable_encoder_gets_gradients(tokenizer):
    enc = HFTextEncoder(MINILM, freeze=False)
    ids, mask = tokenizer.tokenize(["one polyp"])
    enc(ids, mask).sum().backward()
    assert any(p.grad is not None for p in enc.parameters())


def test_missing_text_encoder_errors_name_key_and_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(PretrainedWeightsError, match=r"'text_encoder'.*no_such_model"):
        HFTextEncoder(str(missing))
    not_a_model = tmp_path / "empty_folder"
    not_a_model.mkdir()
    with pytest.raises(PretrainedWeightsError, match="config.json"):
        HFTextEncoder(str(not_a_model))


def test_offline_hub_id_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match=r"'text_encoder'.*HF_HUB_OFFLINE"):
        HFTextEncoder("example-org/model-that-is-not-cached")


def test_image_encoder_random_and_local_checkpoint(tmp_path):
    import timm

    enc = TimmFeatureEncoder("convnext_atto", weights=None)
    assert enc.channels == [40, 80, 160, 320] and enc.reductions == [4, 8, 16, 32]
    feats = enc(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    # a local checkpoint of the classification model, as timm saves it, is loaded into the encoder
    torch.manual_seed(1)
    classifier = timm.create_model("convnext_atto", pretrained=False)
    ckpt = tmp_path / "convnext_atto.pth"
    torch.save(classifier.state_dict(), ckpt)
    loaded = TimmFeatureEncoder("convnext_atto", weights=str(ckpt))
    assert torch.equal(loaded.body.stem_0.weight, classifier.stem[0].weight)
    assert TimmFeatureEncoder("convnext_atto", weights="null").channels == enc.channels


def test_image_encoder_errors(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match=r"'image_encoder_weights'.*missing\.pth"):
        TimmFeatureEncoder("convnext_atto", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmFeatureEncoder("convnext_gigantic")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsError, match="'image_encoder_weights'"):
        TimmFeatureEncoder("convnext_atto", weights="timm")


def test_cached_features_are_copies_of_their_rows_not_views_of_the_batch(tokenizer):
    enc = HFTextEncoder(MINILM, num_layers_to_average=1, cache_size=8)
    ids, mask = tokenizer.tokenize(["left lung", "right lung", "both lungs", "one polyp"])
    enc(ids, mask)
    row_bytes = 16 * 384 * 4  # (L, D) float32
    assert len(enc._cache) == 4
    for feats in enc._cache.values():
        assert feats.untyped_storage().nbytes() == row_bytes  # a view would keep the whole (4, L, D) batch alive


def test_image_encoder_takes_a_timm_pretrained_tag(tmp_path, monkeypatch):
    """``convnext_tiny.fb_in1k`` (the ImageNet-1k weights Ariadne uses) is a model name plus a tag."""
    enc = TimmFeatureEncoder("convnext_atto.d2_in1k", weights=None)
    assert enc.channels == [40, 80, 160, 320]
    with pytest.raises(ValueError, match=r"unknown timm model 'convnext_atto\.no_such_tag'.*tags of convnext_atto"):
        TimmFeatureEncoder("convnext_atto.no_such_tag")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsError, match=r"convnext_tiny\.fb_in1k"):  # offline: the tag is what is looked for
        TimmFeatureEncoder("convnext_tiny.fb_in1k", weights="timm")


def test_a_prepared_batch_is_looked_up_by_its_host_rows_and_compile_keeps_the_cache(tokenizer):
    """Issue 16's levers for the frozen encoder: the trainer's batch preparation hands over the host copy of
    the token rows, so the cache lookup reads nothing back from the device; under torch.compile the lookup
    is a graph break, so repeated texts are still encoded once (before, compiling bypassed the cache)."""
    from common.engine.trainer import TextPrepareBatch

    enc = HFTextEncoder(MINILM, num_layers_to_average=1, cache_size=8)
    calls = []
    original = enc._encode
    enc._encode = lambda i, m: calls.append(i.shape[0]) or original(i, m)
    ids, mask = tokenizer.tokenize(["left lung", "right lung"])
    batch = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 1, 4, 4), "text_ids": ids, "text_mask": mask}
    _, _, _, kwargs = TextPrepareBatch()(batch, torch.device("cpu"))
    first = enc(**kwargs)
    assert enc.rows_read_back == 0 and calls == [2]
    enc(ids.clone(), mask.clone())  # not the prepared tensors: the rows are read from the tensors themselves
    assert enc.rows_read_back == 1 and calls == [2]

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = enc

        def forward(self, text_ids, text_mask):
            return self.text_encoder(text_ids, text_mask).mean(1) * 2

    compiled = torch.compile(Head(), backend="eager")
    again = compiled(ids, mask)
    compiled(ids, mask)
    assert calls == [2]  # both calls answered from the cache
    assert torch.allclose(again, first.mean(1) * 2)
    other, other_mask = tokenizer.tokenize(["both lungs", "left lung"])
    compiled(other, other_mask)
    assert calls == [2, 1]  # only the new text is encoded
