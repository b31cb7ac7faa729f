"""LTSE on one 24 GB GPU and what trains: SAM encodes one image at a time, the embedding / lm_head switch,
and the gate's self-attention over all [SEG]s of an instruction together."""

import pytest
import torch

from bundles.ltse.scripts.aem import ExpertGate
from common.data.seg_answers import special_tokens
from common.networks.llava import LlavaLM, save_tiny_llava, tokenize_conversation

from test_ltse_network import make_batch, make_ltse


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_sam_encodes_one_image_at_a_time_with_the_batched_result(llava_dir):
    net = make_ltse(llava_dir).eval()
    inputs, _ = make_batch(net)
    assert len(inputs["sam_images"]) == 2
    encoder = net.sam.image_encoder
    global_blocks = [b for b in encoder.blocks if b.window_size == 0]
    assert global_blocks  # the tiny SAM's last block attends globally, as ViT-H's 4 global blocks do
    calls = []
    hooks = [encoder.register_forward_pre_hook(lambda m, args: calls.append(("encoder", args[0].shape[0])))]
    hooks += [b.attn.register_forward_pre_hook(lambda m, args: calls.append(("global attention", args[0].shape[0])))
              for b in global_blocks]
    with torch.no_grad():
        out = net(**inputs)
    for h in hooks:
        h.remove()
    assert calls == [("encoder", 1)] + [("global attention", 1)] * len(global_blocks) + \
        [("encoder", 1)] + [("global attention", 1)] * len(global_blocks)
    # the same embeddings as one batched encoding
    with torch.no_grad():
        batched = net.sam.encode_image(inputs["sam_images"])
        one_by_one = torch.cat([net.sam.encode_image(inputs["sam_images"][b: b + 1]) for b in range(2)])
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-5)
    assert [m.shape[0] for m in out["masks"]] == [2, 1]


def _weights(llava):
    """The effective input-embedding and lm_head matrices (V, d), trained rows / copies in place."""
    ids = torch.arange(len(llava.processor.tokenizer))
    emb = llava.base.get_input_embeddings()(ids[None])[0].detach().clone()
    head = llava.base.lm_head(torch.eye(llava.hidden_size)).detach().clone().T
    return emb, head


@pytest.mark.parametrize("all_rows", [False, True])
def test_train_all_token_rows_switch(llava_dir, all_rows):
    torch.manual_seed(0)
    llava = LlavaLM(llava_dir, new_tokens=special_tokens(True), dtype="float32", gradient_checkpointing=False,
                    train_all_token_rows=all_rows)
    vocab, d = len(llava.processor.tokenizer), llava.hidden_size
    new = sorted(llava.token_ids.values())
    trainable = {n: p for n, p in llava.named_parameters() if p.requires_grad}
    rows_count = sum(p.numel() for n, p in trainable.items() if "lora_" not in n)
    # all rows: the whole input embedding and lm_head train; off: the new tokens' rows of each only
    assert rows_count == (2 * vocab * d if all_rows else 2 * len(new) * d)
    before_emb, before_head = _weights(llava)
    rgb = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy()
    batch = tokenize_conversation(llava.processor, [rgb], ["segment the tumor and the fat"],
                                  ["Sure, tumor [SEG], fat [REJ]."], template=llava.prompt_template)
    ids = batch["input_ids"]
    assert set(new) <= set(ids[0].tolist())
    _, logits = llava(ids, batch["attention_mask"], batch["pixel_values"])
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]) + logits[0, -1].square().mean()  # last token too
    loss.backward()
    torch.optim.SGD(list(trainable.values()), lr=1.0).step()
    after_emb, after_head = _weights(llava)
    emb_changed = (after_emb - before_emb).abs().sum(1) > 0
    head_changed = (after_head - before_head).abs().sum(1) > 0
    image_id = llava.base.config.image_token_id
    old_used = torch.tensor(sorted(set(ids[0].tolist()) - set(new) - {image_id}))
    assert emb_changed[new].all() and head_changed[new].all()
    if all_rows:   # every text token's embedding row moves, and every lm_head row (the softmax touches all)
        assert emb_changed[old_used].all() and head_changed.all()
    else:
        assert not emb_changed[old_used].any() and int(head_changed.sum()) == len(new)


def test_gate_self_attention_sees_all_seg_prompts_of_an_instruction_together():
    torch.manual_seed(0)
    gate = ExpertGate(dim=16, num_experts=4, top_k=2, num_heads=2, mlp_dim=32).eval()
    image, pe = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    prompts = torch.randn(2, 1, 16)
    changed = prompts.clone()
    changed[1] = torch.randn(1, 16)
    seen = []
    hook = gate.self_attn.register_forward_hook(lambda m, args, out: seen.append(out[0].detach()))
    with torch.no_grad():
        _, p1 = gate(prompts, image, pe)
        _, p2 = gate(changed, image, pe)
    hook.remove()
    # the first [SEG]'s self-attention output and its expert probabilities follow the second [SEG]
    assert not torch.allclose(seen[0].reshape(2, 16)[0], seen[1].reshape(2, 16)[0])
    assert not torch.allclose(p1[0], p2[0])
