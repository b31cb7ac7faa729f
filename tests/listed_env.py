"""A Python environment that holds only the packages a bundle's ``metadata.json`` lists, built offline in seconds.

    from listed_env import listed_env, isolated_environ

    python = listed_env(meta["required_packages_version"], extra=("jsonschema",), folder=tmp_path / "envs")
    subprocess.run([python, "-m", "monai.bundle", "run", "inferring", ...], cwd=unpacked_bundle,
                   env=isolated_environ(), check=True)

What a user gets from ``pip install torch==.. monai==.. numpy==.. <each listed name>==<version>`` on a clean machine:
the listed distributions, torch, monai and numpy, and every distribution ``pip`` would install for them (the
closure of their ``Requires-Dist``, environment markers evaluated for this interpreter, a requirement's extras
followed only where a requirement names them: ``monai`` alone does not bring ``fire``, ``monai[fire]`` would).
Nothing is downloaded: a ``python -m venv --without-pip`` environment (no system site-packages) gets symlinks
into the site-packages of this checkout's ``.venv`` (the interpreter running the tests): each closure
distribution's top-level files and folders and its ``.dist-info``, as its ``RECORD`` names them. A folder that
distributions outside the closure also fill (``nvidia/``, a namespace package such as ``google/``) is made as a
real folder and linked into at the depth where its owners part. Nothing of this repository comes along: the
editable install's ``.pth`` file and finder belong to ``tgseg-bundles``, which is never in a closure, so
``import common`` / ``import transforms`` / ``import bundles`` fail there, as long as the process does not run
from the repository root (``python -c`` and ``-m`` put the working folder first on ``sys.path``) and
``PYTHONPATH`` is unset: run it with ``cwd`` outside the repository and ``env=isolated_environ()``.

Environments are cached under ``folder`` by a hash of the requirement list and of the resolved closure (names
and installed versions), so several tests, and several pytest-xdist workers (a file lock), share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "tgseg-bundles"  # this repository, installed editable: never part of a listed environment
# metadata.json names these in keys of their own (pytorch_version, monai_version, numpy_version)
CORE = ("torch", "monai", "numpy")
SITE_PACKAGES = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
# variables that would put something else on a listed environment's path
PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH")


class ListedEnvError(RuntimeError):
    """The listed environment cannot be built from this machine's packages (offline)."""


def source_site_packages() -> Path:
    """Where the distributions are linked from: the site-packages of the interpreter running (``.venv``)."""
    return Path(sysconfig.get_paths()["purelib"])


def isolated_environ(**overrides: str) -> dict[str, str]:
    """``os.environ`` without the variables that would add to a listed environment's ``sys.path``
    (``PYTHONPATH``...), offline for Hugging Face, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in PATH_VARIABLES}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    env.update(overrides)
    return env


def _installed(source: Path) -> dict[str, importlib_metadata.Distribution]:
    """``{canonical name: distribution}`` of the distributions in ``source`` (and only there: not the repository's
    egg-info on ``sys.path``)."""
    found = {}
    for dist in importlib_metadata.distributions(path=[str(source)]):
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def closure(roots: Iterable[str], installed: Mapping[str, importlib_metadata.Distribution]) -> dict[str, str]:
    """``{canonical name: version}`` of the distributions ``pip install <roots>`` would leave: the roots and what
    they require, markers evaluated for this interpreter, extras followed where a requirement names them. A
    required distribution that is not installed, or installed in a version the requirement excludes, raises."""
    todo: list[tuple[Requirement, str]] = [(Requirement(r), "(listed)") for r in roots]
    done: dict[str, set[str]] = {}
    problems = []
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name == PROJECT:
            raise ListedEnvError(f"{req.name} is this repository: a listed environment must not hold it")
        dist = installed.get(name)
        if dist is None:
            problems.append(f"{req} (required by {by}) is not installed in {source_site_packages()}")
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{req} (required by {by}): {dist.version} is installed")
        wanted = {"", *(canonicalize_name(e) for e in req.extras)}
        new = wanted - done.get(name, set())
        if not new:
            continue
        done.setdefault(name, set()).update(new)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None:
                if "" in new:
                    todo.append((sub, f"{name}=={dist.version}"))
            elif any(sub.marker.evaluate({"extra": extra}) for extra in new):
                extras = ",".join(sorted(new - {""}))
                todo.append((sub, f"{name}{f'[{extras}]' if extras else ''}=={dist.version}"))
    if problems:
        raise ListedEnvError("pip would install what this machine does not have:\n  " + "\n  ".join(problems))
    return {name: installed[name].version for name in sorted(done)}


def _owners(installed: Mapping[str, importlib_metadata.Distribution]) -> tuple[dict, dict]:
    """``(owners, children)`` of every path in the site-packages the installed distributions' RECORDs name:
    ``owners[("nvidia", "cublas")] = {"nvidia-cublas"}``, ``children[("nvidia",)] = {"cublas", ...}``."""
    owners: dict[tuple, set[str]] = defaultdict(set)
    children: dict[tuple, set[str]] = defaultdict(set)
    for name, dist in installed.items():
        files = dist.files
        if files is None:
            raise ListedEnvError(f"{name} has no RECORD: which files are its own is not known")
        for file in files:
            parts = Path(file).parts
            if not parts or parts[0] in ("..", "/") or Path(file).is_absolute():
                continue  # console scripts in bin/, data files outside site-packages
            for end in range(1, len(parts) + 1):
                owners[parts[:end]].add(name)
                children[parts[: end - 1]].add(parts[end - 1])
    return owners, children


def _link(source: Path, target: Path, members: set[str], owners: dict, children: dict, prefix: tuple = ()) -> int:
    """Symlink into ``target`` what the ``members`` own in ``source``: a whole file or folder where no other
    distribution owns part of it, a real folder linked into where others do. Returns the number of links."""
    count = 0
    for child in sorted(children.get(prefix, ())):
        path = prefix + (child,)
        own = owners[path]
        if not own & members:
            continue
        src, dst = source.joinpath(*path), target.joinpath(*path)
        if not (src.exists() or src.is_symlink()):
            continue  # named in a RECORD, gone from the disk (a removed .pyc)
        if src.suffix == ".pth" and len(path) == 1:
            _check_pth(src, source)
        if own <= members or not src.is_dir() or src.is_symlink():
            dst.symlink_to(src, target_is_directory=src.is_dir())
            count += 1
        else:  # shared with distributions outside the environment: link what the members own inside
            dst.mkdir()
            count += _link(source, target, members, owners, children, path)
    return count


def _check_pth(path: Path, source: Path) -> None:
    """A ``.pth`` of a listed distribution may import (``distutils-precedence.pth``), never add a folder outside
    site-packages (how an editable install puts a repository on the path)."""
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "import ", "import\t")):
            continue
        folder = (source / line).resolve()
        if not folder.is_relative_to(source.resolve()):
            raise ListedEnvError(f"{path} adds {folder} to sys.path: the listed environment would see more than "
                                 "the listed distributions")


def _build(env: Path, members: set[str], source: Path, installed) -> int:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True,
                   timeout=120)
    cfg = (env / "pyvenv.cfg").read_text()
    if "include-system-site-packages = false" not in cfg:
        raise ListedEnvError(f"{env} would see the system site-packages:\n{cfg}")
    site = env / SITE_PACKAGES
    if not site.is_dir():
        raise ListedEnvError(f"{env} has no {SITE_PACKAGES}")
    owners, children = _owners(installed)
    return _link(source, site, members, owners, children)


def listed_env(required: Mapping[str, str], extra: Iterable[str] = (), *, folder: Path) -> Path:
    """The ``python`` of an environment holding only ``required`` + ``extra`` + torch, monai and numpy, and the
    distributions pip would install for them; built once per requirement list under ``folder`` and reused.

    Args:
        required: ``{distribution: version}`` as ``metadata.json``'s ``required_packages_version`` has it. Each
            must be installed here in that version (the environment is linked from this checkout's ``.venv``,
            offline); another version raises :class:`ListedEnvError` rather than testing what is not listed.
            An empty version (``""``) takes the installed one.
        extra: more requirements the caller's own tools need, not the bundle (``"jsonschema"`` for
            ``verify_metadata`` as the zoo's CI runs it); requirement strings, extras allowed (``"monai[fire]"``).
        folder: where environments are kept (``tmp_path_factory.mktemp(...)``): ``folder/env-<hash>/``.

    Returns:
        ``folder/env-<hash>/bin/python``. Run it with ``cwd`` outside the repository and
        ``env=isolated_environ()``; ``folder/env-<hash>/listed.json`` records the requirement list and the
        closure (``{"closure": {name: version}}``).
    """
    source = source_site_packages()
    installed = _installed(source)
    roots, wrong = [], []
    for name, version in sorted(required.items()):
        dist = installed.get(canonicalize_name(name))
        if dist is not None and version and dist.version != str(version):
            wrong.append(f"{name}=={version} is listed, {dist.version} is installed")
        roots.append(f"{name}=={version}" if version else name)
    if wrong:
        raise ListedEnvError("an environment of the listed versions cannot be built offline here: " + "; ".join(wrong))
    roots += list(CORE) + list(extra)
    members = closure(roots, installed)
    record = {"required": dict(sorted(required.items())), "extra": sorted(extra), "source": str(source),
              "python": sys.version, "closure": members}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = folder / f"env-{key}"
    python = env / "bin" / "python"
    from filelock import FileLock

    with FileLock(str(folder / f"env-{key}.lock")):
        if (env / "listed.json").is_file():
            return python
        tmp = folder / f".building-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            start = time.perf_counter()
            links = _build(tmp, set(members), source, installed)
            record.update(links=links, seconds=round(time.perf_counter() - start, 2))
            (tmp / "listed.json").write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(env, ignore_errors=True)
            tmp.rename(env)  # the venv's paths are relative to its python: it works moved
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return python
