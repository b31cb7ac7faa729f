"""The repository's code and configs rewritten to run from a zip: the shared packages vendored as
``scripts.tgseg``, the engine merged into the bundle's JSON configs, the card's commands as the zip reads them."""

import re
from pathlib import Path

from common.engine.config_files import ENGINE_CONFIGS, config_files, engine_config

VENDOR = "scripts.tgseg"
SHARED = ("common", "transforms")  # the repository's shared packages


def vendor_python(text: str, module: str | Path) -> str:
    """Imports of the shared packages -> relative imports of their copy in ``scripts/tgseg/``.

    ``module``: the file's path in the bundle's ``scripts/`` folder (``network.py``,
    ``tgseg/common/engine/checkpoints.py``). The dots reach ``scripts.tgseg`` from the file's package:
    ``from common.x import y`` -> ``from .tgseg.common.x import y`` in ``scripts/network.py``,
    ``from transforms.base.errors import E`` -> ``from ...transforms.base.errors import E`` in
    ``scripts/tgseg/common/engine/checkpoints.py``, ``import common`` -> ``from .tgseg import common``. Never
    ``scripts.`` itself: a process that uses several packaged bundles imports each one's package under a
    name of its own (:func:`transforms.base.describe.bundle_package`), and each one's modules then import
    their own copy of the shared code."""
    parts = Path(module).parent.parts
    if parts[:1] == ("tgseg",):  # vendored shared code: up to scripts.tgseg
        dots, base = "." * len(parts), ""
    else:  # the bundle's own modules: up to scripts, then into tgseg
        dots, base = "." * (len(parts) + 1), "tgseg"
    for package in SHARED:
        where = f"{dots}{base}.{package}" if base else f"{dots}{package}"
        text = re.sub(rf"^(\s*)from {package}(\.| import)", rf"\g<1>from {where}\g<2>", text, flags=re.M)
        text = re.sub(rf"^(\s*)import {package}\b(?!\.)", rf"\g<1>from {dots}{base} import {package}", text, flags=re.M)
    return text


def config_sources(folder: Path) -> list[Path]:
    """The YAML files a bundle's runs read: its own configs and the engine's."""
    return sorted((folder / "configs").glob("*.yaml")) + [engine_config(n) for n in ENGINE_CONFIGS]


def packaged_configs(folder: Path) -> dict[str, list[Path]]:
    """``{name: files merged into the zip's configs/<name>.json}``: the engine merged into ``train`` (as
    ``--config_file`` lists it in the repository), train.yaml's transforms into ``inference`` (cut to what
    inference reads), the engine's ``multi_gpu_train`` into the bundle's, the bundle's others."""
    configs = {p.stem: [p] for p in sorted((folder / "configs").glob("*.yaml"))}
    configs["train"] = config_files(folder, "train")
    configs["inference"] = config_files(folder, "inference")
    configs["multi_gpu_train"] = config_files(folder, "train", "multi_gpu_train")[2:]  # engine's, then the bundle's
    return configs


def packaged_docs(text: str) -> str:
    """A model card's commands as they read in the zip: the engine is inside ``configs/train.json``."""
    text = re.sub(r",\s*'common/engine/train\.yaml'", "", text)
    text = re.sub(r",\s*'common/engine/multi_gpu_train\.yaml'", "", text)
    # inference.json holds the transforms it reads from train.yaml
    text = re.sub(r"\"\['(?:bundles/\w+/)?configs/train\.yaml',\s*'((?:bundles/\w+/)?configs/inference\.yaml)'\]\"", r"\1", text)
    return re.sub(r"(?:bundles/\w+/)?configs/(\w+)\.yaml", r"configs/\1.json", text)


def vendor_config(config):
    """A parsed config with ``$import common`` -> ``$import scripts.tgseg.common as common`` and ``_target_``
    paths of the shared packages -> their vendored paths (expressions keep ``common.x`` as the imported name)."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "_target_" and isinstance(value, str) and value.split(".")[0] in SHARED:
                value = f"{VENDOR}.{value}"
            out[key] = vendor_config(value)
        return out
    if isinstance(config, list):
        return [vendor_config(v) for v in config]
    if isinstance(config, str):
        for package in SHARED:
            if config.strip() == f"$import {package}":
                return f"$import {VENDOR}.{package} as {package}"
    return config


