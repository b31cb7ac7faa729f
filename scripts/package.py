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

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from _repo import ROOT, bundle_folder

from monai.bundle import ConfigParser

from transforms.base.describe import typed
from common.core.config_ids import standalone
from common.engine.checkpoints import check_checkpoint, read_checkpoint

from zoo.metadata import ckpt_export_args, describe_model, no_ckpt_export, verify_args
from zoo.requirements import module_file, reached_modules, requirements
from zoo.vendoring import packaged_configs, packaged_docs, vendor_config, vendor_python

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


# what a bundle folder holds that is the bundle's own: anything else there (sample_data/, runs/, a user's
# notes) stays out of the zip, and the packager says so
BUNDLE_FILES = ("configs", "scripts", "docs", "prompts", "LICENSE", "pretrained_sources.yml")


def copy_bundle_files(folder: Path, target: Path) -> list[str]:
    """Copy the bundle's own files (:data:`BUNDLE_FILES`; configs are written separately) into ``target``;
    returns the names in ``folder`` that were left out."""
    target.mkdir(parents=True)
    left_out = []
    for path in sorted(folder.iterdir()):
        if path.name in ("__init__.py", "__pycache__", "configs"):
            continue  # the repository's test imports need __init__.py, a bundle does not
        if path.name not in BUNDLE_FILES:
            left_out.append(path.name + ("/" if path.is_dir() else ""))
        elif path.is_dir():
            shutil.copytree(path, target / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, target / path.name)
    return left_out


def stage(bundle: str, target: Path, model: str | None = None, max_zip_mb: float = 25.0,
          model_url: str = "", trust_remote_code: bool = False, pretrained_sources: dict | None = None) -> dict:
    """Write the unpacked bundle into ``target`` (which must not exist); returns its metadata."""
    import torch

    folder = bundle_folder(bundle)
    if target.exists():
        raise FileExistsError(f"{target} exists; package into an empty place")
    left_out = copy_bundle_files(folder, target)
    if left_out:
        print(f"{bundle}: left out of the zip (not the bundle's own files): {', '.join(left_out)}")
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
        source = module_file(module)
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
        meta = describe_packaged_model(bundle, folder, target, model, meta, trust_remote_code, pretrained_sources)
        size_mb = model.stat().st_size / 2**20
        if size_mb <= max_zip_mb:
            shutil.copy(model, target / "models" / "model.pt")
        else:
            write_large_files(target, [large_file_entry("models/model.pt", model, model_url)])
            print(f"{bundle}: warning: {model} ({size_mb:.1f} MB, over --max_zip_mb {max_zip_mb:g}) stays out of the "
                  f"zip; its large_files.yml says to download it from {model_url} (sha256 {_sha256(model)}): "
                  "upload the file there, `python -m monai.bundle download_large_files` fetches and checks it")
    else:
        meta["description"] = ("No model in this package: train one with configs/train.json (the paper's "
                               f"configuration, described here). {meta['description']}")
    meta["required_packages_version"] = {**meta.pop("optional_packages_version", {}),
                                         **requirements(folder, tokenizers)}
    import monai
    import numpy

    meta.update(monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
                numpy_version=numpy.__version__)
    (target / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    return meta


def describe_packaged_model(bundle: str, folder: Path, target: Path, model: Path, meta: dict,
                            trust_remote_code: bool, pretrained_sources: dict | None = None) -> dict:
    """The zip's metadata as the model inside is (:mod:`zoo.metadata`), and the argument files of MONAI's zoo
    tools (``configs/verify_net_in_out.json``, ``configs/ckpt_export.json``) where they can check it; where they
    cannot, ``zoo_tools`` in the metadata says why."""
    from common.engine.checkpoints import load_model
    from common.engine.export import one_tensor, why_not_exportable

    description = read_checkpoint(str(model))["description"]
    tokenizer = target / "models" / "tokenizer"
    tokenizer = tokenizer if tokenizer.is_dir() else None
    no_network = why_not_exportable(description, folder)
    tools = {}
    if no_network:
        meta = describe_model(meta, None, description, tokenizer)
        tools["verify_net_in_out"] = tools["ckpt_export"] = f"not applicable: {no_network}"
    else:
        loaded = load_model(str(model), str(folder), trust_remote_code=trust_remote_code,
                            pretrained_sources=pretrained_sources)
        meta = describe_model(meta, one_tensor(loaded.network), description, tokenizer)
        args = verify_args(meta, description.get("settings", {}), tokenizer)
        (target / "configs" / "verify_net_in_out.json").write_text(json.dumps(args) + "\n")
        tools["verify_net_in_out"] = ("python -m monai.bundle verify_net_in_out network_def "
                                      "--args_file configs/verify_net_in_out.json")
        reason = no_ckpt_export(meta, bundle)
        if reason:
            tools["ckpt_export"] = f"not supported: {reason}"
        else:
            (target / "configs" / "ckpt_export.json").write_text(json.dumps(ckpt_export_args(meta)) + "\n")
            tools["ckpt_export"] = "python -m monai.bundle ckpt_export network_def --args_file configs/ckpt_export.json"
    meta["zoo_tools"] = {"run from": "the unpacked bundle's folder", **tools}
    return meta


def large_file_entry(path: str, source: Path, url: str) -> dict:
    """One ``large_files.yml`` entry: where the file goes in the bundle, where to download it, its sha256."""
    if not url:
        raise ValueError(f"{source} stays out of the zip (over --max_zip_mb), and large_files.yml must say where to "
                         "download it: give --model_url (the address you will upload it to), or raise --max_zip_mb")
    return {"path": path, "url": url, "hash_val": _sha256(source), "hash_type": "sha256"}


def write_large_files(target: Path, entries: list[dict]) -> None:
    """``large_files.yml``, as ``python -m monai.bundle download_large_files`` reads it."""
    (target / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))


def checked_model(folder: Path, model: str | Path, trust_remote_code: bool = False) -> dict:
    """The description of a ``model.pt`` to pack, read as data: a checkpoint of another bundle, one whose
    description holds anything but plain values naming this bundle's classes, or with non-finite weights is
    refused (:func:`common.engine.checkpoints.check_checkpoint`), so no zip passes such a file on."""
    return check_checkpoint(read_checkpoint(str(model)), model, folder, trust_remote_code)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(bundle: str, model: str | None = None, out_dir: str = "dist", max_zip_mb: float = 25.0,
         model_url: str = "", bump: str | None = None, changelog: str | None = None,
         trust_remote_code: bool = False, pretrained_sources: dict | None = None) -> str:
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
        pretrained_sources: where this machine keeps the pretrained parts the model leaves out, when not
            where its description says (``"{'sam.checkpoint': '/weights/sam.pth'}"``), as for ``inferring``.
    """
    folder = bundle_folder(bundle)
    if model:
        checked_model(folder, model, trust_remote_code)  # before any work: a refused model changes nothing
        if Path(model).stat().st_size / 2**20 > max_zip_mb and not model_url:
            large_file_entry("models/model.pt", Path(model), model_url)  # refused: says to give --model_url
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
        meta = stage(bundle, target, model, max_zip_mb, model_url, trust_remote_code, pretrained_sources)
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
