"""Talk to a trained LTSE: the model stays loaded, and each line you type is an instruction about the current
image; its answer is printed and its masks and overlay written.

    python scripts/chat.py --checkpoint runs/ltse/models/model.pt --image patch.png
    > Please segment the tumor and the necrosis.
    Sure, tumor [SEG], necrosis or debris [REJ].   (1 mask: runs/ltse/chat/patch_seg1.png)
    > :image other_patch.png        (switch image)
    > :quit                         (or Ctrl-D)

Non-interactive (scripts, tests): ``--instructions "['first', 'second']"`` answers each in turn and exits.
The frozen LLaVA and SAM load from where the checkpoint says; where they lie elsewhere on this machine:
``--pretrained_sources "{'sam.checkpoint': '/weights/sam_vit_h_4b8939.pth'}"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _repo  # noqa: F401  (puts the repository root on sys.path)

from common.core.describe import typed

ROOT = Path(__file__).resolve().parents[1]


def _load(checkpoint: str, bundle: str, device: str | None, pretrained_sources: dict | None = None):
    import torch

    from common.engine.checkpoints import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_model(checkpoint, str(bundle), pretrained_sources=pretrained_sources)
    return trained, trained.network.to(device)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(checkpoint: str = str(ROOT / "bundles/ltse/models/model.pt"), image: str | None = None,
         instructions=None, output_dir: str = "runs/ltse/chat", bundle: str = str(ROOT / "bundles/ltse"),
         device: str | None = None, threshold: float = 0.0, max_new_tokens: int | None = None,
         pretrained_sources: dict | None = None) -> None:
    """Load ``checkpoint`` once and answer instructions about ``image`` (module doc)."""
    import torch

    from bundles.ltse.scripts.inference import AnswerWriter, read_rgb

    trained, network = _load(checkpoint, bundle, device, pretrained_sources)
    max_new_tokens = max_new_tokens or int(trained.settings.get("max_new_tokens", 64))
    writer = AnswerWriter(output_dir)
    current = {"path": None, "rgb": None}

    def use(path: str) -> bool:
        if not Path(path).is_file():
            print(f"no such image: {path}")
            return False
        current["path"], current["rgb"] = path, read_rgb(path)
        print(f"image: {path} ({current['rgb'].shape[1]}x{current['rgb'].shape[0]})")
        return True

    def answer(text: str) -> None:
        if current["rgb"] is None:
            print("no image yet: type ':image PATH' first")
            return
        result = network.generate(torch.as_tensor(current["rgb"]).permute(2, 0, 1), text,
                                  max_new_tokens=max_new_tokens, threshold=threshold)
        row = writer.write(current["path"], current["rgb"], text, result)
        masks = row["masks"].split()
        where = f"{len(masks)} mask(s) in {writer.output_dir}: {masks[0]}" + (f" ... {masks[-1]}" if len(masks) > 1 else "") \
            if masks else "no mask"
        print(f"{result['answer']}   ({where}; overlay {row['overlay']})")

    if image:
        use(image)
    if instructions is not None:
        for text in [instructions] if isinstance(instructions, str) else list(instructions):
            answer(str(text))
    else:
        print("type an instruction, ':image PATH' to change the image, ':quit' to stop")
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line in (":quit", ":q", ":exit"):
                break
            if line.startswith(":image"):
                use(line[len(":image"):].strip())
                continue
            answer(line)
    if writer.rows:
        print(f"index of this session: {writer.write_index()}")


if __name__ == "__main__":
    _repo.run_cli(main)
