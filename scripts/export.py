"""Export a trained bundle model to TorchScript and ONNX, and check each file against the eager network.

    python scripts/export.py --bundle tmca --checkpoint runs/tmca/models/model.pt
    python scripts/export.py --bundle monch --checkpoint runs/monch/models/model.pt --formats "['onnx']"

Writes into ``--out_dir`` (default: beside the checkpoint) ``model.ts`` and/or ``model.onnx`` (each with the
checkpoint's description inside), and, for text-guided bundles, ``tokenizer/``: the inputs are the image and
the token ids and mask that tokenizer makes. Every file is run on inputs it never saw while being exported
(another image, another prompt) and compared with the eager network; a logit differing by more than ``tolerance``
(default 1e-3; float32 kernels of the two runtimes differ by ~1e-4) is an
error. Then it prints the latency of each form (batch 1, this machine). ``inferring`` takes either file as
``--checkpoint``.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import json
from pathlib import Path

import torch

from _repo import bundle_folder, metadata
from transforms.base.describe import typed
from common.engine.checkpoints import check_checkpoint, load_model, read_checkpoint
from common.engine.export import (example_inputs, latency_ms, max_difference, read_exported, to_onnx, to_torchscript,
                                  why_not_exportable)

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
FRESH_TEXT = "the largest one, on the right side of the image, 12.5 mm across"


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(bundle: str, checkpoint: str, out_dir: str | None = None, formats=("torchscript", "onnx"),
         tolerance: float = 1e-3, json_out: str | None = None, trust_remote_code: bool = False,
         pretrained_sources: dict | None = None) -> str:
    """Export, check and time; prints a Markdown table and returns it."""
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {list(FORMATS)}")
    torch.manual_seed(0)
    root = bundle_folder(bundle)
    description = check_checkpoint(read_checkpoint(checkpoint), checkpoint, root, trust_remote_code)  # data only
    reason = why_not_exportable(description, root)
    if reason:
        raise ValueError(f"{bundle}: no TorchScript/ONNX export: {reason}")
    loaded = load_model(checkpoint, str(root), "cpu", trust_remote_code=trust_remote_code,
                        pretrained_sources=pretrained_sources)
    network, description = loaded.network.eval(), loaded.description
    out = Path(out_dir) if out_dir else Path(checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if description.get("settings", {}).get("text"):
        from transforms.base.pretrained import load_tokenizer

        text = description["settings"]["text"]
        tokenizer = str(out / "tokenizer")
        load_tokenizer("tokenizer", text["tokenizer"], text.get("trust_remote_code", False)).save_pretrained(tokenizer)
    traced_with = example_inputs(description, tokenizer)
    fresh = example_inputs(description, tokenizer, seed=1, texts=[FRESH_TEXT])
    rows = [{"form": "eager (checkpoint)", "file": str(checkpoint), "max_difference": 0.0,
             "ms": latency_ms(network, fresh)}]
    for form in formats:
        path = out / f"model{FORMATS[form]}"
        if form == "torchscript":
            to_torchscript(network, traced_with, path, description, metadata(bundle))
        else:
            to_onnx(network, traced_with, path, description)
        exported, _ = read_exported(path)
        difference = max_difference(network, exported, fresh)
        if difference > tolerance:
            raise RuntimeError(f"{path}: differs from the eager network by {difference:.2e} on new inputs "
                               f"(tolerance {tolerance:.0e})")
        rows.append({"form": form, "file": str(path), "max_difference": difference, "ms": latency_ms(exported, fresh)})
    lines = [f"{bundle}: {loaded!r}, input {tuple(fresh[0].shape)}, CPU" + (f", tokenizer {tokenizer}" if tokenizer else ""),
             "", "| form | file | max abs difference from eager on new inputs | ms/image (batch 1) |", "|---|---|---:|---:|"]
    lines += [f"| {r['form']} | {r['file']} | {r['max_difference']:.2e} | {r['ms']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1))
    return None if __name__ == "__main__" else table


if __name__ == "__main__":
    _repo.run_cli(main)
