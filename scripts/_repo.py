"""The repository as the command-line tools see it: its root on ``sys.path``, and its bundles.

A bundle is a folder ``bundles/<name>/`` with ``configs/train.yaml``; the tools find bundles there
and read what they need from the bundle's own configs and metadata, so adding a bundle touches only
its folder (plus its tests and a README row).
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bundle_names(with_demo: bool = False) -> list[str]:
    """The bundles in ``bundles/`` (those with a ``configs/demo.yaml`` when ``with_demo``)."""
    wanted = "demo.yaml" if with_demo else "train.yaml"
    return sorted(p.parent.parent.name for p in (ROOT / "bundles").glob(f"*/configs/{wanted}"))


def bundle_folder(name: str) -> Path:
    folder = ROOT / "bundles" / name
    if not (folder / "configs" / "train.yaml").is_file():
        raise ValueError(f"no bundle {name!r}; bundles: {bundle_names()}")
    return folder


def metadata(name: str) -> dict:
    return json.loads((bundle_folder(name) / "configs" / "metadata.json").read_text())


class BundleConfig:
    """A bundle's merged configs, parsed with its own ``scripts`` package (as ``monai.bundle run`` does)."""

    def __init__(self, name: str, files, overrides: dict | None = None):
        from monai.bundle import ConfigParser

        self.folder = bundle_folder(name)
        self.parser = ConfigParser()
        self.parser.read_config([str(self.folder / "configs" / f"{f}.yaml") for f in files])
        self.parser.update(overrides or {})

    def __getitem__(self, key):
        return self.parser[key]

    def __contains__(self, key) -> bool:
        return key in self.parser

    def get_parsed_content(self, key: str, **kwargs):
        from common.core.describe import bundle_scripts

        with bundle_scripts(self.folder):
            return self.parser.get_parsed_content(key, **{"lazy": False, **kwargs})


def read_bundle_config(name: str, files=("train",), overrides: dict | None = None) -> BundleConfig:
    return BundleConfig(name, files, overrides)
