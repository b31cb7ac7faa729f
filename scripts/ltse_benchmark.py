"""LTSE's benchmark (``python scripts/benchmark.py --bundle ltse``): size, training memory and answer speed.

    python scripts/benchmark.py --bundle ltse                       # the paper's size on CUDA: LLaVA-1.5-7B + SAM ViT-H
    python scripts/benchmark.py --bundle ltse --device cpu --size 7b --settings "[]"   # parameter counts only
    python scripts/benchmark.py --bundle ltse --settings "['bf16','bf16+checkpointing','4bit+checkpointing']" \\
        --llava /models/llava-1.5-7b-hf          # 4-bit quantises real weights: it needs a LLaVA folder

The network is the bundle's own (``configs/train.yaml``, its switches as ``--override`` values) with random
weights: ``--size 7b`` is the architecture of ``llava-hf/llava-1.5-7b-hf`` (:func:`common.networks.llava.
llava_7b_config`, a config without weights and the tokenizer trained in code) and SAM ViT-H; ``--size tiny``
the demo's. Speed and memory do not depend on the weights' values. Parameters are counted on PyTorch's meta
device (nothing allocated), so the counts of the 7B configuration come on any machine (the tokenizer trained
in code is smaller than Vicuna's 32 064 rows, so [SEG] and [REJ] take rows of that vocabulary; the real
tokenizer adds two rows, 0.03 M parameters).

Per setting (the frozen base's precision and the memory levers of ``train.yaml``):

* training: one optimiser step (forward over prompt + answer, LTSELoss, backward, AdamW) on ``batch_size``
  instructions (the paper: 2 per device) with three targets each; seconds per step and peak memory;
* answering: ``LTSE.generate`` on one image with an answer of exactly ``new_tokens`` tokens (greedy, no
  early stop), its [SEG] masks included; seconds per instruction and peak memory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from _repo import read_bundle_config

SETTINGS = ("fp32", "bf16", "bf16+checkpointing", "4bit+checkpointing")
PARTS = (  # (name, test on a parameter name), first match wins
    ("LoRA (LLM)", lambda n: "lora_" in n),
    ("new-token rows ([SEG], [REJ])", lambda n: "trainable_tokens" in n),
    ("LLM (Vicuna/Llama)", lambda n: n.startswith("llava.") and "language_model" in n or n.startswith("llava.")
     and "lm_head" in n),
    ("CLIP vision tower", lambda n: n.startswith("llava.") and "vision_tower" in n),
    ("LLaVA image projector", lambda n: n.startswith("llava.") and "multi_modal_projector" in n),
    ("SAM image encoder", lambda n: n.startswith("sam.image_encoder")),
    ("SAM prompt encoder", lambda n: n.startswith("sam.prompt_encoder")),
    ("[SEG] projector", lambda n: n.startswith("projector.")),
    ("expert mask decoders", lambda n: n.startswith(("aem.experts.", "decoder."))),
    ("expert gate", lambda n: n.startswith("aem.gate.")),
    ("other", lambda n: True),
)


def part_of(name: str) -> str:
    return next(part for part, test in PARTS if test(name))


def _overrides(size: str, folder: Path, llava: str | None, setting: str, device: torch.device) -> dict:
    from common.networks.llava import llava_7b_config, save_llava_folder
    from common.networks.sam import tiny_sam_config

    dtype = "float32" if setting == "fp32" else "bfloat16"
    out = {"device": str(device), "llava_dtype": dtype, "sam_dtype": dtype,
           "gradient_checkpointing": "checkpointing" in setting, "load_in_4bit": setting.startswith("4bit")}
    if llava:
        out.update(llava_name_or_path=llava, llava_pretrained=True)
    else:
        if not (folder / "config.json").is_file():
            save_llava_folder(folder, llava_7b_config() if size == "7b" else None, weights=False,
                              **({} if size == "7b" else {"hidden_size": 64}))
        out.update(llava_name_or_path=str(folder), llava_pretrained=False)
    out.update(sam_checkpoint=None, sam_variant="vit_h", sam_config=None if size == "7b" else tiny_sam_config())
    if size != "7b":
        out.update(gate_heads=2, gate_mlp_dim=64)
    return out


def _network(cfg):
    return cfg.get_parsed_content("network_def")  # read_bundle_config names the bundle's own package


def count_parameters(cfg, on_meta: bool = True) -> list[dict]:
    """Per part: parameters and how many of them train, counted on the meta device (``on_meta``; a
    vocabulary that grows for the new tokens is initialised from its rows' statistics, which the meta device
    cannot compute: the tiny model is counted on the CPU)."""
    with torch.device("meta" if on_meta else "cpu"):
        net = _network(cfg)
    total, trained = defaultdict(int), defaultdict(int)
    for name, p in net.named_parameters():
        part = part_of(name)
        total[part] += p.numel()
        trained[part] += p.numel() if p.requires_grad else 0
    return [{"part": part, "params_m": total[part] / 1e6, "trainable_m": trained[part] / 1e6}
            for part, _ in PARTS if total[part]]


def _inputs(net, batch_size: int, image_side: int, device: torch.device):
    """``batch_size`` instructions about random patches, each answered with three slots ([SEG], [REJ], [SEG])."""
    from common.data.seg_answers import build_answer, seg_target_masks
    from common.networks.llava import tokenize_conversation
    from common.networks.sam import sam_preprocess

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, image_side, image_side), generator=g).float() for _ in range(batch_size)]
    names, present = ["tumor", "necrosis", "stroma"], [True, net.rej_token_id is None, True]
    answer, slots = build_answer(names, present, net.multi_seg, net.use_rej)
    targets = [seg_target_masks((torch.rand(3, image_side, image_side, generator=g) > 0.5).float(), slots).to(device)
               for _ in images]
    rgb = [im.to(torch.uint8).permute(1, 2, 0).numpy() for im in images]
    batch = tokenize_conversation(net.llava.processor, rgb, ["Please segment the tumor, the necrosis and the stroma."]
                                  * batch_size, [answer] * batch_size, template=net.llava.prompt_template)
    sam = [sam_preprocess(im, net.sam.image_size) for im in images]
    inputs = dict(pixel_values=batch["pixel_values"].to(device), sam_images=torch.stack([s[0] for s in sam]).to(device),
                  input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  labels=batch["labels"].to(device), resize_sizes=[s[1] for s in sam],
                  original_sizes=[im.shape[1:] for im in images])
    return inputs, targets, images[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def measure(cfg, setting: str, device: torch.device, batch_size: int, steps: int, warmup: int, new_tokens: int,
            image_side: int) -> dict:
    from common.engine.network import prepare_network, trainable_parameters

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net = prepare_network(_network(cfg), device)  # as the bundle's train.yaml does
    loss_fn = cfg.get_parsed_content("loss")
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=1e-4, weight_decay=0.0)
    inputs, targets, image = _inputs(net, batch_size, image_side, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting != "fp32")
    net.train()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(**inputs), targets)["loss"]
        loss.backward()
        optimizer.step()
    _sync(device)
    train_s = (time.perf_counter() - start) / steps
    train_peak = _peak_gb(device)
    del optimizer, inputs, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net.eval()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        with autocast:
            net.generate(image, "Please segment the tumor, the necrosis and the stroma.", max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens)
    _sync(device)
    return {"setting": setting, "train_s_per_step": train_s, "train_peak_gb": train_peak,
            "answer_s": (time.perf_counter() - start) / steps, "answer_peak_gb": _peak_gb(device)}


def run(size: str = "7b", settings=None, device: str | None = None, batch_size: int = 2, steps: int = 3,
        warmup: int = 1, new_tokens: int = 24, llava: str | None = None, override: dict | None = None,
        image_side: int = 512) -> tuple[str, dict]:
    """The tables (Markdown) and the raw figures."""
    if size not in ("7b", "tiny"):
        raise ValueError(f"--size must be 7b (LLaVA-1.5-7B + SAM ViT-H) or tiny (the demo's), got {size!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if settings is None:
        settings = ["bf16", "bf16+checkpointing"] if dev.type == "cuda" else ["fp32"]
    settings = [settings] if isinstance(settings, str) else list(settings)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {SETTINGS}")
    if any(s.startswith("4bit") for s in settings) and (not llava or dev.type != "cuda"):
        raise ValueError("4bit quantises real weights with bitsandbytes on CUDA: give --llava (a LLaVA folder or hub id "
                         "in the cache) and run on a GPU")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llava"
        config = lambda setting: read_bundle_config("ltse", ["train"], {  # noqa: E731
            **_overrides(size, folder, llava, setting, dev), **(override or {})})
        parts = count_parameters(config("bf16"), on_meta=size == "7b")
        for setting in settings:
            print(f"measuring ltse ({size}) / {setting} on {dev} ...", file=sys.stderr, flush=True)
            rows.append(measure(config(setting), setting, dev, batch_size, steps, warmup, new_tokens, image_side))
    total = sum(p["params_m"] for p in parts)
    trained = sum(p["trainable_m"] for p in parts)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [f"ltse ({'LLaVA-1.5-7B + SAM ViT-H' if size == '7b' else 'tiny demo model'}, random weights) on {name}, "
             f"torch {torch.__version__}", "",
             "| part | parameters (M) | trainable (M) |", "|---|---:|---:|"]
    lines += [f"| {p['part']} | {p['params_m']:.2f} | {p['trainable_m']:.2f} |" for p in parts]
    lines += [f"| **all** | **{total:.2f}** | **{trained:.2f}** ({100 * trained / total:.2f} %) |"]
    if rows:
        lines += ["", f"training: batch {batch_size} instructions of 3 targets on {image_side}-px patches; answering: "
                      f"{new_tokens} new tokens", "",
                  "| setting | train s/step | peak train memory (GiB) | s/instruction | peak answer memory (GiB) |",
                  "|---|---:|---:|---:|---:|"]
        for r in rows:
            mem = lambda v: "n/a (CPU)" if v != v else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {r['setting']} | {r['train_s_per_step']:.3f} | {mem(r['train_peak_gb'])} | "
                         f"{r['answer_s']:.3f} | {mem(r['answer_peak_gb'])} |")
    return "\n".join(lines), {"device": name, "size": size, "parts": parts, "rows": rows}
