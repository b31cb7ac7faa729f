"""@configurable: command-line strings become typed arguments at one place, and objects describe how they were built."""

from __future__ import annotations

import sys
from typing import Sequence

import pytest
import torch
from torch import nn

from transforms.base.describe import (
    ConfigurationError,
    bundle_config,
    bundle_package,
    coerce,
    configurable,
    describe,
    instantiate,
    target_name,
    typed,
)


@configurable(pretrained={"weights": None})
class Encoder(nn.Module):
    def __init__(self, width: int = 4, weights: str | None = "hub/tag"):
        super().__init__()
        self.weights = weights
        self.layer = nn.Linear(width, width)


@configurable
class Net(nn.Module):
    def __init__(self, encoder: nn.Module, levels: Sequence[str] = ("a",), flag: bool = True,
                 rate: float = 0.5, limit: int | None = None):
        super().__init__()
        self.encoder, self.levels, self.flag, self.rate, self.limit = encoder, levels, flag, rate, limit


@pytest.mark.parametrize("value, hint, expected", [
    ("false", bool, False), ("True", bool, True), ("0", bool, False), (1, bool, True),
    ("null", int | None, None), ("none", str | None, None), ("", float | None, None),
    ("3", int, 3), (2.0, int, 2), ("2.5", float, 2.5), (32, str, "32"),
    ("[]", Sequence[str], []), ("['global', '32']", Sequence[str], ["global", "32"]),
    ("global,32", Sequence[str], ["global", "32"]), ([32, "16"], Sequence[str], ["32", "16"]),
    ("[1, 2]", tuple[int, ...], (1, 2)), ("[true, false]", Sequence[bool], [True, False]),
    ("{'a': 1}", dict, {"a": 1}),
])
def test_command_line_strings_become_typed_values(value, hint, expected):
    assert coerce(value, hint) == expected


@pytest.mark.parametrize("value, hint, message", [
    ("maybe", bool, "is not true/false"), ("three", int, "is not a whole number"), (2.5, int, "is not a whole number"),
    ("null", int, "is not a whole number"), (None, int, None), ("x", float, "is not a number"), (5, Sequence[str], "is not a list"),
])
def test_unreadable_values_name_the_argument(value, hint, message):
    if message is None:  # None passes through: only a union with None turns "null" into None
        assert coerce(value, hint) is None
        return
    with pytest.raises(ConfigurationError, match=message):
        coerce(value, hint, "Net: argument 'x'")


def test_constructors_get_typed_arguments_and_name_the_bad_one():
    net = Net(Encoder("8"), levels="['b','c']", flag="false", rate="0.25", limit="null")
    assert net.flag is False and net.levels == ["b", "c"] and net.rate == 0.25 and net.limit is None
    assert net.encoder.layer.in_features == 8
    with pytest.raises(ConfigurationError, match=r"Net: argument 'flag' = 'perhaps'"):
        Net(Encoder(), flag="perhaps")


def test_description_rebuilds_the_same_network_and_drops_pretrained_sources():
    net = Net(Encoder(6, weights="timm"), levels=["x"], flag="false")
    config = describe(net)
    assert config == {
        "_target_": f"{__name__}.Net",
        "encoder": {"_target_": f"{__name__}.Encoder", "width": 6, "weights": None},  # the checkpoint has them
        "levels": ["x"], "flag": False, "rate": 0.5, "limit": None,
    }
    again = instantiate(config, roots=(__name__.split('.')[0],))  # this test module's classes
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 6)
    assert torch.equal(again.encoder.layer(x), net.encoder.layer(x))
    assert again.flag is False and again.encoder.weights is None
    # a part left out of the checkpoint keeps its pretrained source
    kept = describe(net, keep_pretrained=[net.encoder])
    assert kept["encoder"]["weights"] == "timm"


def test_undescribable_parts_and_values_are_named():
    net = Net(nn.Linear(2, 2))
    with pytest.raises(ConfigurationError, match=r"network.encoder: Linear is not @configurable"):
        describe(net)
    assert describe(Encoder(weights="$not.a.value"))["weights"] is None  # replaced: the checkpoint has the weights
    with pytest.raises(ConfigurationError, match=r"starts with '\$'"):
        describe(Net(Encoder(), levels=["$x"]))


def test_typed_functions():
    @typed
    def f(limit: int | None = None, check: bool = True):
        return limit, check

    assert f("null", "false") == (None, False)
    assert f(limit="5") == (5, True)


def test_bundle_code_is_named_as_a_bundle_config_names_it(root):
    from bundles.tmca.scripts.network import TMCA

    assert target_name(TMCA) == "scripts.network.TMCA"
    assert target_name(Encoder) == f"{__name__}.Encoder"


def _scripts_modules() -> dict:
    return {name: module for name, module in sys.modules.items() if name == "scripts" or name.startswith("scripts.")}


def test_bundle_package_resolves_to_the_bundle_asked_for(root):
    before = _scripts_modules()
    lsms = bundle_package(root / "bundles" / "lsms")
    assert hasattr(lsms.network, "LSMS")
    tmca = bundle_package(root / "bundles" / "tmca")
    assert hasattr(tmca.network, "TMCA") and not hasattr(tmca.network, "LSMS")
    assert bundle_package(root / "bundles" / "lsms") is lsms  # imported once, never replaced
    assert _scripts_modules() == before  # no module named scripts was swapped, added or removed


def test_two_bundles_configs_name_their_own_package(root):
    before = _scripts_modules()
    config = {"imports": ["$import scripts", "$import common"],
              "network_def": {"_target_": "scripts.network.X", "loss": {"_target_": "monai.losses.DiceLoss"}},
              "out": "$scripts.inference.x(@network_def)", "from": "$from scripts.losses import Y"}
    lsms, tmca = (bundle_config(config, root / "bundles" / name) for name in ("lsms", "tmca"))
    assert lsms["imports"] == ["$import bundles.lsms.scripts as scripts", "$import common"]
    assert lsms["network_def"] == {"_target_": "bundles.lsms.scripts.network.X",
                                   "loss": {"_target_": "monai.losses.DiceLoss"}}
    assert lsms["out"] == config["out"] and lsms["from"] == "$from bundles.lsms.scripts.losses import Y"
    assert tmca["network_def"]["_target_"] == "bundles.tmca.scripts.network.X"
    assert config["network_def"]["_target_"] == "scripts.network.X"  # a copy
    assert _scripts_modules() == before


def test_a_bundle_outside_the_repository_gets_a_package_of_its_own(root, tmp_path):
    import shutil

    from bundles.tmca.scripts.network import TMCA

    copy = tmp_path / "tmca"
    shutil.copytree(root / "bundles" / "tmca" / "scripts", copy / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = _scripts_modules()
    package = bundle_package(copy)
    assert package.__name__.startswith("_tgseg_bundle_tmca_") and package.network.TMCA is not TMCA
    assert target_name(package.network.TMCA) == "scripts.network.TMCA"
    assert _scripts_modules() == before
