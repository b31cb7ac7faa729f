"""Exported models: TorchScript and ONNX files of a bundle's network, checked against the eager network, and
read back as networks that ``inferring`` runs in place of a checkpoint.

Both files carry the checkpoint's description (bundle, network settings, input size, tokenizer): TorchScript
as the extra file ``description.json`` (with the bundle's metadata, MONAI's ``save_net_with_metadata``), ONNX
in its ``metadata_props``. The inputs are the network's own: ``image`` (B, C, H, W) and, for text-guided
bundles, ``text_ids`` and ``text_mask`` (B, L) int64 from the tokenizer saved beside the file; the output is
``pred``, the logits. The frozen text encoder's cache is bypassed while tracing or exporting, so the files
read the text they are given.

A network with several outputs (Co-Seg: tissue logits, nuclei logits, HV maps, types) has ``pack`` and
``output_channels``: the file returns them concatenated as one ``pred`` (the form ``metadata.json``
describes), the description records ``outputs`` (name -> channels), and :func:`read_exported` splits the
tensor back into the dict the bundle's post-processing reads.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

EXPORT_SUFFIXES = (".ts", ".onnx")


def example_inputs(description: Mapping, tokenizer: str | None, batch: int = 1, seed: int = 0,
                   texts: Sequence[str] | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of the described network: a random image of the trained size, and tokenised texts."""
    settings = description.get("settings", {})
    size = int(settings.get("image_size", 224))
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=g)
    text = settings.get("text")
    if not text:
        return (image,)
    from transforms.text import TokenizeTextd

    texts = list(texts or ["one small lesion, located in top left of the image"] * batch)
    ids, mask = TokenizeTextd(tokenizer=tokenizer or text["tokenizer"], max_length=text["max_length"],
                              trust_remote_code=text.get("trust_remote_code", False)).tokenize(texts)
    return image, ids, mask


def why_not_exportable(description: Mapping, bundle_root: str | Path) -> str | None:
    """Why the network a checkpoint describes cannot be one traced graph (its class's ``not_exportable``:
    LTSE generates its answer token by token), or None; asked before the network is built."""
    from transforms.base.describe import bundle_package, described_class

    klass = described_class((description.get("network") or {}).get("_target_"), "network", roots=("scripts",),
                            package=bundle_package(bundle_root))
    return getattr(klass, "not_exportable", None)


def output_channels(network: nn.Module) -> dict[str, int] | None:
    """Name -> channels of a network with several outputs, in the order it packs them; None for one tensor."""
    channels = getattr(network, "output_channels", None)
    return dict(channels) if isinstance(channels, Mapping) and hasattr(network, "pack") else None


class Packed(nn.Module):
    """A network with several outputs, returning them as one tensor (what is traced and exported)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.network.pack(self.network(*inputs))


class Unpacked(nn.Module):
    """An exported network's one tensor, split back into its named outputs."""

    def __init__(self, network: nn.Module, channels: Mapping[str, int]):
        super().__init__()
        self.network, self.channels = network, dict(channels)

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> dict[str, torch.Tensor]:
        packed = self.network(*inputs, **named)
        return dict(zip(self.channels, packed.split(list(self.channels.values()), dim=1)))


def exportable(network: nn.Module, description: Mapping) -> tuple[nn.Module, dict]:
    """The module to trace or export, and the description to store with it (``outputs`` added for a
    network with several outputs)."""
    channels = output_channels(network)
    if channels is None:
        return network, dict(description)
    return Packed(network).eval(), {**description, "outputs": channels}


def one_tensor(network: nn.Module) -> nn.Module:
    """A packaged bundle's ``network_def`` as MONAI's zoo tools call it (``verify_net_in_out``, ``ckpt_export``):
    one tensor out, the form ``metadata.json`` describes. A network with several outputs (Co-Seg) packs them
    itself (its ``packed_output``) rather than through a wrapper, so a checkpoint's weights load into it under
    their own names; an exported file's network already returns one tensor."""
    if isinstance(network, Unpacked):
        return network.network
    if output_channels(network) is not None:
        network.packed_output = True
    return network


def named_outputs(network: nn.Module, channels: Mapping[str, int] | None = None) -> nn.Module:
    """The network the bundle's own post-processing runs: outputs that :func:`one_tensor` packed split back
    into their names (``channels``: an exported file's, from its description)."""
    if channels is None and getattr(network, "packed_output", False):
        channels = output_channels(network)
    return Unpacked(network, channels) if channels else network


def as_tensor(output) -> torch.Tensor:
    """One tensor of a network's output (several outputs concatenated in their order)."""
    return torch.cat(list(output.values()), dim=1) if isinstance(output, Mapping) else output


def input_names(inputs: Sequence[torch.Tensor]) -> list[str]:
    return ["image", "text_ids", "text_mask"][: len(inputs)]


def to_torchscript(network: nn.Module, inputs: Sequence[torch.Tensor], path: Path, description: Mapping,
                   metadata: Mapping | None = None) -> Path:
    from monai.data import save_net_with_metadata

    network, description = exportable(network, description)
    with torch.no_grad():
        traced = torch.jit.trace(network.eval(), tuple(inputs), check_trace=False)
    save_net_with_metadata(traced, str(path.with_suffix("")), include_config_vals=False, append_timestamp=False,
                           meta_values=dict(metadata or {}),
                           more_extra_files={"description.json": json.dumps(description).encode()})
    return path


def to_onnx(network: nn.Module, inputs: Sequence[torch.Tensor], path: Path, description: Mapping,
            opset: int = 17) -> Path:
    import onnx

    from common.evaluation.cost import attention_fast_path

    network, description = exportable(network, description)
    names = input_names(inputs)
    with torch.no_grad(), attention_fast_path(False):  # the fused kernel has no ONNX form
        torch.onnx.export(network.eval(), tuple(inputs), str(path), input_names=names, output_names=["pred"],
                          dynamic_axes={n: {0: "batch"} for n in [*names, "pred"]}, opset_version=opset,
                          dynamo=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "description", json.dumps(description)
    onnx.save(model, str(path))
    return path


class OnnxNetwork(nn.Module):
    """An ONNX file run by onnxruntime, called like the network it was exported from (tensors in and out)."""

    def __init__(self, path: str | Path):
        super().__init__()
        import onnxruntime

        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, providers=onnxruntime.get_available_providers())
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.names, inputs))
        feeds.update(named)
        device = next(iter(feeds.values())).device
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items() if k in self.names}
        return torch.from_numpy(self.session.run(["pred"], arrays)[0]).to(device)


def exported_description(path: str | Path) -> Any:
    """The description a ``.ts`` or ``.onnx`` file carries, read as data without loading the model (loading
    TorchScript compiles and runs its code): ``extra/description.json`` of the TorchScript zip archive, or the
    ONNX file's metadata."""
    path = Path(path)
    try:
        if path.suffix == ".ts":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/extra/description.json")]
                if not names:
                    raise ValueError("no description in it (export it with scripts/export.py)")
                return json.loads(archive.read(names[0]))
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "description" not in props:
            raise ValueError("no description in its metadata (export it with scripts/export.py)")
        return json.loads(props["description"])
    except Exception as err:  # a file that is no export (zip or protobuf errors): say which
        from transforms.base.errors import CheckpointError

        raise CheckpointError(path, f"cannot read its description ({err})") from err


def read_exported(path: str | Path) -> tuple[nn.Module, dict]:
    """``(network, description)`` of a ``.ts`` or ``.onnx`` file written by :func:`to_torchscript` / :func:`to_onnx`."""
    path = Path(path)
    if path.suffix == ".ts":
        from monai.data import load_net_with_metadata

        network, _, extra = load_net_with_metadata(str(path), map_location="cpu", more_extra_files=("description.json",))
        network, description = network.eval(), json.loads(extra["description.json"])
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "description" not in props:
            raise ValueError(f"{path}: no description in its metadata (export it with scripts/export.py)")
        network, description = OnnxNetwork(path), json.loads(props["description"])
    if description.get("outputs"):
        network = Unpacked(network, description["outputs"]).eval()
    return network, description


def max_difference(a: nn.Module, b: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        return float((as_tensor(a(*inputs)) - as_tensor(b(*inputs))).abs().max())


def latency_ms(network: nn.Module, inputs: Sequence[torch.Tensor], repeats: int = 10, warmup: int = 5) -> float:
    """Mean wall time of one forward (batch of ``inputs``), after ``warmup`` calls (TorchScript's profiling
    executor optimises the graph during its first calls)."""
    with torch.no_grad():
        for _ in range(warmup):
            network(*inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            network(*inputs)
    return 1000 * (time.perf_counter() - start) / repeats
