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

from transforms.base.describe import typed
from transforms.base.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _load(checkpoint: str, bundle: str, device: str | None, pretrained_sources: dict | None = None):
    import torch

    from common.engine.checkpoints import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_model(checkpoint, str(bundle), pretrained_sources=pretrained_sources)
    return trained, trained.network.to(device)


class ChatSession:
    """The current image and the answers so far; ``predictions.csv`` is rewritten after every answer, so a
    session that ends in any way keeps the index of what it answered."""

    def __init__(self, network, writer, max_new_tokens: int, threshold: float):
        self.network, self.writer = network, writer
        self.max_new_tokens, self.threshold = max_new_tokens, threshold
        self.path: str | None = None
        self.rgb = None

    def use(self, path: str) -> None:
        """Switch to the image at ``path``; a missing or unreadable file raises a DatasetError naming it
        (the current image stays)."""
        from bundles.ltse.scripts.inference import read_rgb

        if not path:
            raise DatasetError(None, "no image given: type ':image PATH'")
        rgb = read_rgb(path)
        self.path, self.rgb = path, rgb
        print(f"image: {path} ({rgb.shape[1]}x{rgb.shape[0]})")

    def answer(self, text: str) -> None:
        import torch

        if self.rgb is None:
            raise DatasetError(None, "no image yet: type ':image PATH' first")
        result = self.network.generate(torch.as_tensor(self.rgb).permute(2, 0, 1), text,
                                       max_new_tokens=self.max_new_tokens, threshold=self.threshold)
        row = self.writer.write(self.path, self.rgb, text, result)
        self.writer.write_index()
        masks = row["masks"].split()
        where = f"{len(masks)} mask(s) in {self.writer.output_dir}: {masks[0]}" + (f" ... {masks[-1]}" if len(masks) > 1 else "") \
            if masks else "no mask"
        print(f"{result['answer']}   ({where}; overlay {row['overlay']})")

    def talk(self, lines) -> None:
        """One instruction per line, ``:image PATH`` to switch; a bad image or a missing one is said (naming
        the file) and the session goes on."""
        print("type an instruction, ':image PATH' to change the image, ':quit' to stop")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line in (":quit", ":q", ":exit"):
                break
            try:
                if line.startswith(":image"):
                    self.use(line[len(":image"):].strip())
                else:
                    self.answer(line)
            except DatasetError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(checkpoint: str = str(ROOT / "bundles/ltse/models/model.pt"), image: str | None = None,
         instructions=None, output_dir: str = "runs/ltse/chat", bundle: str = str(ROOT / "bundles/ltse"),
         device: str | None = None, threshold: float = 0.0, max_new_tokens: int | None = None,
         pretrained_sources: dict | None = None) -> None:
    """Load ``checkpoint`` once and answer instructions about ``image`` (module doc). A missing or unreadable
    ``--image``, or ``--instructions`` without one, stops before the model is loaded (exit status 1)."""
    from bundles.ltse.scripts.inference import AnswerWriter, read_rgb

    if image:
        read_rgb(image)  # a DatasetError naming the file, before the model takes its time to load
    elif instructions is not None:
        raise DatasetError(None, "--instructions answers questions about --image PATH: give one")
    trained, network = _load(checkpoint, bundle, device, pretrained_sources)
    max_new_tokens = max_new_tokens or int(trained.settings.get("max_new_tokens", 64))
    session = ChatSession(network, AnswerWriter(output_dir), max_new_tokens, threshold)
    if image:
        session.use(image)
    if instructions is not None:
        for text in [instructions] if isinstance(instructions, str) else list(instructions):
            session.answer(str(text))
    else:
        session.talk(sys.stdin)
    if session.writer.rows:
        print(f"index of this session: {session.writer.output_dir / 'predictions.csv'}")


if __name__ == "__main__":
    _repo.run_cli(main)
