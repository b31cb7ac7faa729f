"""A zip's ``required_packages_version`` (scripts/zoo/requirements.py) is enough to run the bundle: fire (MONAI's
bundle command line) and the optional packages of the MONAI components it uses are listed, an import that no
installed distribution provides stops the packaging and names its file, and, in an environment of only the
listed packages (tests/listed_env.py), everything the bundle's code and configs import imports."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata as importlib_metadata

import pytest

from bundle_runner import BUNDLES, ROOT
from listed_env import CORE, _installed, closure, isolated_environ, listed_env, source_site_packages

sys.path.insert(0, str(ROOT / "scripts"))
import zoo.requirements as zr  # noqa: E402
from zoo.requirements import (ALWAYS, KNOWN_PROVIDERS, MONAI_OPTIONAL, SWITCHED, UnknownImportError,  # noqa: E402
                              pinned, reached_imports, requirements)

_cache: dict[str, dict[str, str]] = {}


def required(name: str) -> dict[str, str]:
    """``requirements()`` of bundle ``name`` (once per test process)."""
    if name not in _cache:
        _cache[name] = requirements(ROOT / "bundles" / name)
    return _cache[name]


# ---------------------------------------------------------------------------------------------------------------
# in-process: what is listed
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_lists_fire_and_the_monai_optional_packages_it_uses(name):
    listed = required(name)
    assert listed["fire"] == importlib_metadata.version("fire")  # `python -m monai.bundle ...` is fire's
    # every bundle reads images with MONAI's LoadImage (default readers: itk, nibabel, pillow) and its train.yaml
    # names TensorBoardStatsHandler
    for dist in ("itk", "nibabel", "pillow", "tensorboard"):
        assert listed[dist] == importlib_metadata.version(dist), dist
    assert not set(listed) & set(CORE), "torch, monai and numpy have metadata keys of their own"
    assert "tgseg-bundles" not in listed and "os" not in listed


def test_ltse_lists_bitsandbytes_with_its_pyproject_pin_and_the_others_do_not():
    pin = pinned("bitsandbytes")
    assert pin and required("ltse")["bitsandbytes"] == pin  # load_in_4bit: true imports it
    for name in BUNDLES:
        if name != "ltse":  # they carry llava.py (`$import common`) but no config of theirs can reach it
            assert "bitsandbytes" not in required(name), name


def test_every_package_listed_by_a_rule_is_a_project_dependency():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {zr._canonical(d.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0]) for d in deps}
    ruled = {*ALWAYS, *KNOWN_PROVIDERS.values(), *(d for dists in MONAI_OPTIONAL.values() for d in dists)}
    assert {zr._canonical(d) for d in ruled} <= names


def _fake_bundle(tmp_path, script: str, config: str = "") -> object:
    folder = tmp_path / "fake"
    (folder / "scripts").mkdir(parents=True)
    (folder / "configs").mkdir()
    (folder / "scripts" / "__init__.py").write_text("")
    (folder / "scripts" / "network.py").write_text(script)
    (folder / "configs" / "train.yaml").write_text(config or "imports:\n  - $import os\n  - $import torch\n")
    return folder


def test_an_import_that_no_distribution_provides_raises_naming_the_module_and_the_file(tmp_path):
    folder = _fake_bundle(tmp_path, "def build():\n    import tgseg_not_installed_xyz\n")
    with pytest.raises(UnknownImportError) as err:
        requirements(folder)
    text = str(err.value)
    assert "'tgseg_not_installed_xyz'" in text and str(folder / "scripts" / "network.py") in text
    assert "KNOWN_PROVIDERS" in text
    # found in a config too: `$import` and `_target_` name the module, and the config file is named
    folder = _fake_bundle(tmp_path / "b", "", "net:\n  _target_: tgseg_other_xyz.Net\n")
    with pytest.raises(UnknownImportError, match=r"'tgseg_other_xyz' \(imported by .*configs/train\.yaml\)"):
        requirements(folder)


def test_a_stdlib_import_in_a_config_is_no_package():
    assert zr._config_imports("imports:\n  - $import os\n  - $import torch.distributed as dist\n"
                              "x:\n  _target_: collections.OrderedDict\n") == {"torch"}


def test_a_known_provider_that_is_not_installed_is_listed_with_the_pyproject_pin(tmp_path, monkeypatch):
    provided = {k: v for k, v in importlib_metadata.packages_distributions().items() if k != "bitsandbytes"}
    real_version = importlib_metadata.version

    def version(dist):
        if zr._canonical(dist) == "bitsandbytes":
            raise importlib_metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(zr.importlib_metadata, "packages_distributions", lambda: provided)
    monkeypatch.setattr(zr.importlib_metadata, "version", version)
    folder = _fake_bundle(tmp_path, "def quantise():\n    import bitsandbytes\n",
                          "load_in_4bit: false\nimports:\n  - $import torch\n")
    assert requirements(folder)["bitsandbytes"] == pinned("bitsandbytes")
    # without the switch in its configs a bundle does not list it
    folder = _fake_bundle(tmp_path / "b", "def quantise():\n    import bitsandbytes\n")
    assert "bitsandbytes" not in requirements(folder)


def test_the_closure_follows_extras_only_where_a_requirement_names_them():
    installed = _installed(source_site_packages())
    plain = closure(["monai"], installed)
    assert {"monai", "torch", "numpy"} <= set(plain) and "fire" not in plain  # fire is MONAI's extra
    with_fire = closure(["monai[fire]"], installed)
    assert {"fire", "termcolor"} <= set(with_fire)  # fire and what fire requires
    assert "tgseg-bundles" not in closure(list(required("tmca")) + list(CORE), installed)


def test_a_folder_other_distributions_share_is_linked_into_not_linked_whole(tmp_path):
    # `nvidia/`, `itk/`, `__pycache__/`, namespace packages: several distributions fill one top-level folder
    from listed_env import ListedEnvError, _link

    source, target = tmp_path / "site", tmp_path / "env"
    files = {"shared/a/x.py": "A", "shared/b/y.py": "B", "shared/top.py": "A", "solo/z.py": "A", "mod.py": "A",
             "other.pth": "B", "a.pth": "A"}
    owners, children = {}, {}
    for file, owner in files.items():
        (source / file).parent.mkdir(parents=True, exist_ok=True)
        (source / file).write_text("import os\n" if file.endswith(".pth") else "")
        parts = tuple(file.split("/"))
        for end in range(1, len(parts) + 1):
            owners.setdefault(parts[:end], set()).add(owner)
            children.setdefault(parts[: end - 1], set()).add(parts[end - 1])
    target.mkdir()
    _link(source, target, {"A"}, owners, children)
    assert (target / "shared").is_dir() and not (target / "shared").is_symlink()
    assert (target / "shared" / "a").is_symlink() and (target / "shared" / "top.py").is_symlink()
    assert not (target / "shared" / "b").exists() and not (target / "other.pth").exists()
    assert (target / "solo").is_symlink() and (target / "mod.py").is_symlink() and (target / "a.pth").is_symlink()
    # a listed distribution's .pth that puts a folder outside site-packages on the path (an editable install)
    (source / "a.pth").write_text(str(ROOT) + "\n")
    target2 = tmp_path / "env2"
    target2.mkdir()
    with pytest.raises(ListedEnvError, match="adds"):
        _link(source, target2, {"A"}, owners, children)


# ---------------------------------------------------------------------------------------------------------------
# in an environment of only the listed packages
# ---------------------------------------------------------------------------------------------------------------
PROBE = """
import importlib, importlib.util, json, sys
wanted, absent = json.loads(sys.argv[1]), json.loads(sys.argv[2])
failed = {}
for name in wanted:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{type(err).__name__}: {err}"
from monai.utils import optional_import
for name in wanted:  # as MONAI's optional_import sees them (how it reaches fire, itk, ...)
    if not optional_import(name)[1]:
        failed.setdefault(name, "monai.utils.optional_import fails")
present = [name for name in absent if importlib.util.find_spec(name) is not None]
print(json.dumps({"failed": failed, "present": present, "path": sys.path}))
"""


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    return tmp_path_factory.mktemp("listed_envs")


def _import_names(dists) -> set[str]:
    """The top-level modules these distributions install."""
    wanted = {zr._canonical(d) for d in dists}
    return {module for module, providers in importlib_metadata.packages_distributions().items()
            if not module.startswith("_") and any(zr._canonical(p) in wanted for p in providers)}


@pytest.mark.bundle
@pytest.mark.parametrize("name", BUNDLES)
def test_what_the_bundle_imports_imports_where_only_its_listed_packages_are(name, envs, tmp_path):
    listed = required(name)
    python = listed_env(listed, folder=envs)
    members = json.loads((python.parents[1] / "listed.json").read_text())["closure"]
    # every third-party module the bundle's code and configs import (a switch its configs lack aside), MONAI's
    # command line, and the modules of the MONAI components' optional packages
    reached = {m for m in reached_imports(ROOT / "bundles" / name)
               if m not in SWITCHED or KNOWN_PROVIDERS[m] in listed}
    wanted = sorted({"monai.bundle", "fire", *reached,
                     *_import_names(d for dists in MONAI_OPTIONAL.values() for d in dists if d in listed)})
    # what is installed here but neither listed nor required by a listed package, and this repository
    outside = {module for module, providers in importlib_metadata.packages_distributions().items()
               if all(zr._canonical(p) not in members for p in providers)}
    absent = sorted(outside | {"common", "transforms", "bundles"})
    assert {"pytest", "common", "jsonschema"} <= set(absent)
    proc = subprocess.run([str(python), "-c", PROBE, json.dumps(wanted), json.dumps(absent)], cwd=tmp_path,
                          env=isolated_environ(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failed"], f"{name}: listed {sorted(listed)}, yet these do not import: {result['failed']}"
    assert not result["present"], f"{name}'s environment holds unlisted modules: {result['present']}"
    assert not any(p.startswith(str(ROOT)) for p in result["path"] if p), result["path"]


def _verify(python, meta_file, cwd):
    return subprocess.run([str(python), "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta_file),
                           "--filepath", str(ROOT / "bundles" / "meta_schema_20240725.json")], cwd=cwd,
                          env=isolated_environ(), capture_output=True, text=True, timeout=300)


def _zip_metadata(name, folder):
    """The bundle's metadata.json with the required packages as scripts/package.py writes them."""
    import monai
    import numpy
    import torch

    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    meta["required_packages_version"] = {**meta.pop("optional_packages_version", {}), **required(name)}
    meta.update(monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
                numpy_version=numpy.__version__)
    path = folder / "metadata.json"
    path.write_text(json.dumps(meta, indent=4))
    return path


@pytest.mark.bundle
@pytest.mark.parametrize("name", BUNDLES)
def test_monai_bundle_command_line_runs_where_only_the_listed_packages_are(name, envs, tmp_path):
    # jsonschema is the zoo CI's own tool for verify_metadata, not the bundle's
    python = listed_env(required(name), extra=("jsonschema",), folder=envs)
    proc = _verify(python, _zip_metadata(name, tmp_path), tmp_path)
    assert proc.returncode == 0 and "metadata is verified with no error" in proc.stdout + proc.stderr, \
        (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.bundle
def test_without_fire_listed_monai_bundle_command_line_fails(envs, tmp_path):
    # what the metadata listed before fire was (the import walk alone): `python -m monai.bundle` cannot start
    python = listed_env({k: v for k, v in required("tmca").items() if k not in ALWAYS}, extra=("jsonschema",),
                        folder=envs)
    proc = _verify(python, _zip_metadata("tmca", tmp_path), tmp_path)
    assert proc.returncode != 0 and "No module named 'fire'" in proc.stderr, proc.stderr[-2000:]
