"""Every module of the shared packages is reachable as an attribute of its package, as the bundle configs use
them (``$import common`` then ``common.evaluation.instances...``). A module added without being listed used to
raise AttributeError there (``common.evaluation.instances``)."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(".".join(p.parent.relative_to(ROOT).parts) for root in ("common", "transforms")
                  for p in (ROOT / root).glob("**/__init__.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_an_attribute_of_its_package(package):
    module = importlib.import_module(package)
    folder = ROOT.joinpath(*package.split("."))
    names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"] + \
            [p.name for p in folder.iterdir() if (p / "__init__.py").is_file()]
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{package} does not expose {missing}"
