"""A zip's ``configs/metadata.json`` as the model inside it is, and the arguments MONAI's zoo tools need.

The repository's ``metadata.json`` describes the paper's configuration (``configs/train.yaml``). A packed
model may be another size (the demo's 64 px convnext_atto + MiniLM, a fine-tuned copy with a longer text
budget), so :func:`describe_model` rewrites, from the checkpoint and one forward pass of the built network:

* ``network_data_format``: the image size it was trained at, the text budget (``text_ids``/``text_mask``
  length), the output's channels and size as the network really returns them;
* ``description``: one sentence naming the parts inside (encoder names, frozen or trained, input size);
* ``eval_metrics``: the checkpoint's own validation figures (the template's are placeholders);
* the image size in ``image_classes``/``pred_classes``.

:func:`verify_args` is ``configs/verify_net_in_out.json`` (``--args_file``): a real prompt tokenised by the
zip's tokenizer as ``extra_forward_args``, since ``verify_net_in_out`` calls ``network(image, **extra)``.
:func:`ckpt_export_args` is ``configs/ckpt_export.json`` for a network MONAI's exporter can trace (one image
in, one tensor out); for the others :func:`no_ckpt_export` is the reason the metadata and card give.
"""

from __future__ import annotations

import copy
import re
from typing import Mapping

import torch

# words a model card reader knows a part by, in the order they are looked for in a part's description
_SOURCE_KEYS = ("name", "name_or_path", "model_name", "variant", "checkpoint", "weights", "pretrained")
_CONFIG_KEYS = ("model_config", "model_cfg")
EXAMPLE_PROMPT = "one small lesion, located in the upper left of the image"


def _parts(network: Mapping, path: str = "") -> list[tuple[str, Mapping]]:
    """``(argument name, description)`` of each built part of a network description (a dict with a target)."""
    found = []
    for key, value in network.items():
        if isinstance(value, Mapping) and "_target_" in value:
            found.append((f"{path}{key}", value))
            found += _parts(value, f"{path}{key}.")
    return found


def part_summary(name: str, part: Mapping) -> str:
    """``image_encoder: TimmFeatureEncoder convnext_atto, random weights`` and the like."""
    words = [f"{name}: {part['_target_'].rsplit('.', 1)[-1]}"]
    sources = [str(part[k]) for k in _SOURCE_KEYS if isinstance(part.get(k), str) and part.get(k)]
    words += sources[:2]
    weight_keys = [k for k in ("weights", "pretrained", "checkpoint") if k in part]
    if any(part.get(k) for k in _CONFIG_KEYS):
        words.append("built from a config of its own (not the pretrained size)")
    elif weight_keys and not any(part.get(k) for k in weight_keys):
        words.append("random weights")
    if part.get("freeze") is True:
        words.append("frozen")
    return " ".join(words[:1]) + (" " + ", ".join(words[1:]) if len(words) > 1 else "")


def model_summary(description: Mapping, image_shape: list[int] | None, text_length: int | None,
                  size: str | None = None) -> str:
    """The sentence that opens a packaged model's description: what is inside, at what size (``size``: the
    words for a model that reads its images at more than one size)."""
    parts = "; ".join(part_summary(n, p) for n, p in _parts(description.get("network", {})))
    size = size or (f"{'x'.join(map(str, image_shape))} px images" if image_shape else None)
    text = f"prompts of up to {text_length} tokens" if text_length else None
    trained = description.get("training", {})
    epoch = f"trained for {trained['epoch']} epoch(s)" if "epoch" in trained else None
    facts = ", ".join(f for f in (size, text, epoch) if f)
    return (f"The model in this package ({description.get('bundle')} {description.get('version', '')}): {parts}"
            f"{'; ' + facts if facts else ''}. The method as the paper configures it follows.")


def _image_size(settings: Mapping) -> list[int] | None:
    size = settings.get("image_size")
    if size is None:
        return None
    return [int(size)] * 2 if isinstance(size, (int, float)) else [int(s) for s in size]


def example_inputs(settings: Mapping, tokenizer) -> dict:
    """One batch the network reads: a random image of the trained size and, for a text-guided network,
    :data:`EXAMPLE_PROMPT` tokenised to the trained text budget (``tokenizer``: the zip's saved one)."""
    inputs = {"image": torch.rand(1, 3, *_image_size(settings), generator=torch.Generator().manual_seed(0))}
    text = settings.get("text")
    if text:
        from transforms.text import TokenizeTextd

        ids, mask = TokenizeTextd(tokenizer=str(tokenizer or text["tokenizer"]), max_length=text["max_length"],
                                  trust_remote_code=text.get("trust_remote_code", False)).tokenize([EXAMPLE_PROMPT])
        inputs.update(text_ids=ids, text_mask=mask)
    return inputs


def _channel_names(network: torch.nn.Module, description: Mapping, count: int, template: Mapping) -> dict:
    """``channel_def`` of the output: the template's when it has as many channels, else from the network."""
    if len(template) == count:
        return dict(template)
    names: list[str] = []
    channels = getattr(network, "output_channels", None)
    prompts = description.get("network", {}).get("prompts")
    if isinstance(channels, Mapping):
        for name, c in channels.items():
            names += [name] if c == 1 else [f"{name} {i}" for i in range(c)]
    elif isinstance(prompts, Mapping):
        names = list(prompts)
    if len(names) != count:
        names = [f"channel {i}" for i in range(count)]
    return {str(i): n for i, n in enumerate(names)}


def describe_model(meta: Mapping, network: torch.nn.Module, description: Mapping, tokenizer=None) -> dict:
    """``meta`` (the repository's metadata.json) rewritten to describe the model in the zip (module docstring).
    ``network``: the built network in eval mode, as the packaged ``network_def`` returns (one tensor)."""
    meta = copy.deepcopy(dict(meta))
    settings = description.get("settings", {})
    text = settings.get("text") or {}
    image_shape = _image_size(settings)
    inputs_format = meta["network_data_format"]["inputs"]
    outputs_format = meta["network_data_format"]["outputs"]
    paper_shape = list(inputs_format["image"]["spatial_shape"])
    if image_shape is not None:
        inputs = example_inputs(settings, tokenizer)
        with torch.no_grad():
            output = network(inputs.pop("image"), **inputs)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{description.get('bundle')}: network_def returns {type(output).__name__}, not one tensor: "
                            "MONAI's verify_net_in_out and ckpt_export read output.shape")
        inputs_format["image"]["spatial_shape"] = image_shape
        for name in ("text_ids", "text_mask"):
            if name in inputs_format and text:
                inputs_format[name]["spatial_shape"] = [int(text["max_length"])]
        pred = outputs_format["pred"]
        pred["num_channels"] = int(output.shape[1])
        pred["spatial_shape"] = [int(s) for s in output.shape[2:]]
        pred["dtype"] = str(output.dtype).replace("torch.", "")
        pred["channel_def"] = _channel_names(network, description, int(output.shape[1]), pred.get("channel_def", {}))
        old, new = "x".join(map(str, paper_shape)), "x".join(map(str, image_shape))
        for key in ("image_classes", "pred_classes", "label_classes"):
            if isinstance(meta.get(key), str):
                meta[key] = re.sub(rf"\b{old}\b", new, meta[key])
    size = None
    if image_shape is None and settings.get("clip_image_size"):  # LTSE: no tensor forward; its towers' sizes
        clip, sam = int(settings["clip_image_size"]), int(settings.get("sam_image_size") or 0)
        inputs_format["image"]["spatial_shape"] = [clip, clip]
        size = f"images read at {clip}x{clip} px by the CLIP tower" + (f" and {sam} px longest side by SAM" if sam else "")
        for key in ("image_classes", "pred_classes", "label_classes"):
            if isinstance(meta.get(key), str):
                meta[key] = re.sub(rf"\b{paper_shape[0]}x{paper_shape[1]}\b", f"{clip}x{clip}", meta[key])
                if sam:
                    meta[key] = re.sub(r"longest side \d+", f"longest side {sam}", meta[key])
    text_length = text.get("max_length") or settings.get("max_text_tokens")  # LTSE: the instruction's budget
    meta["description"] = f"{model_summary(description, image_shape, text_length, size)} {meta['description']}"
    metrics = description.get("training", {}).get("metrics")
    if metrics:
        meta["eval_metrics"] = {k: round(float(v), 4) for k, v in metrics.items()}
    return meta


def verify_args(meta: Mapping, settings: Mapping, tokenizer) -> dict:
    """``configs/verify_net_in_out.json``: run from the zip's folder with ``--args_file``; the text inputs a
    text-guided network reads come as ``extra_forward_args`` (token rows of :data:`EXAMPLE_PROMPT`)."""
    args = {"net_id": "network_def", "meta_file": "configs/metadata.json", "config_file": "configs/inference.json"}
    if settings.get("text"):
        inputs = example_inputs(settings, tokenizer)
        args["extra_forward_args"] = {k: inputs[k].tolist() for k in ("text_ids", "text_mask")}
    return args


def ckpt_export_args(meta: Mapping) -> dict:
    """``configs/ckpt_export.json`` for a network of one image input: MONAI traces it with a random image of
    the size metadata.json declares."""
    image = meta["network_data_format"]["inputs"]["image"]
    return {"net_id": "network_def", "meta_file": "configs/metadata.json", "config_file": "configs/inference.json",
            "ckpt_file": "models/model.pt", "key_in_ckpt": "model", "filepath": "models/model.ts", "use_trace": True,
            "input_shape": [1, image["num_channels"], *image["spatial_shape"]]}


def no_ckpt_export(meta: Mapping, bundle: str) -> str | None:
    """Why MONAI's ``ckpt_export`` cannot express this network (None where it can)."""
    inputs = [k for k in meta["network_data_format"]["inputs"] if k != "image"]
    if not inputs:
        return None
    return (f"MONAI's ckpt_export traces the network with one random image; this network also reads "
            f"{' and '.join(inputs)}. Export TorchScript/ONNX from a checkout of the tgseg-bundles repository: "
            f"`python scripts/export.py --bundle {bundle} --checkpoint <this folder>/models/model.pt` (all inputs "
            "traced, checked against the eager network, written beside the checkpoint; `inferring` takes the "
            "file as --checkpoint).")


def install_command(versions: Mapping[str, str]) -> str:
    """The model card's one line: ``pip install`` of torch, monai, numpy and every package the zip's metadata lists
    (``{distribution: version}``), pinned as the metadata pins them."""
    return "pip install " + " ".join(f'"{name}=={version}"' for name, version in versions.items())


def card_install_command(folder) -> str:
    """:func:`install_command` for a bundle folder, as ``scripts/package.py`` lists its packages (the model
    card shows this line; a tokenizer named by a checkpoint may add its own packages to a zip's list)."""
    import monai
    import numpy

    from zoo.requirements import requirements

    core = {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__}
    return install_command({**core, **requirements(folder)})
