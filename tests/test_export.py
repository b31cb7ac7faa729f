"""Exported models give the eager model's output, for inputs they never saw while being exported."""

from __future__ import annotations

import pytest
import torch

from bundles.tmca.scripts.network import TMCA
from common.networks.image_encoders import TimmFeatureEncoder
from common.networks.text_encoders import HFTextEncoder
from tests.conftest import MINILM


@pytest.fixture(scope="module")
def tmca_and_prompts(tokenizer):
    torch.manual_seed(0)
    net = TMCA(TimmFeatureEncoder("convnext_atto"), HFTextEncoder(MINILM, num_layers_to_average=3)).eval()
    seen = tokenizer.tokenize(["one small polyp, located in top left of the image"])
    unseen = tokenizer.tokenize(["one large polyp, located in bottom right of the image"])
    return net, seen, unseen


def test_a_traced_model_reads_the_text_it_is_given_not_the_text_it_was_traced_with(tmca_and_prompts):
    """The frozen text encoder's cache used to be traced into the graph: the traced model then answered every
    prompt with the features of the tracing prompt (max difference 17.9 from eager)."""
    net, seen, unseen = tmca_and_prompts
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net(image, *seen)  # a model that has served prompts before: they are in the cache
        net(image, *unseen)
        traced = torch.jit.trace(net, (image, *seen), check_trace=False)
        eager = net(image, *unseen)
        assert not torch.allclose(eager, net(image, *seen))  # the prompt matters
        assert torch.allclose(traced(image, *unseen), eager, atol=1e-4)
