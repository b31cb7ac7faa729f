"""The ``--config_file`` list of a bundle's run: its own configs with the engine merged in.

The training engine is written once (``common/engine/train.yaml``, ``multi_gpu_train.yaml``). A bundle in
this repository has only its data, model, loss and transforms in ``configs/train.yaml``; the engine is
merged right after it. MONAI takes the bundle folder (``scripts``, ``metadata.json``, ``logging.conf``)
from the first file of the list, so the bundle's file comes first and defines none of the engine's ids.
A packaged bundle (``scripts/package.py``) carries the engine merged into its ``configs/train.json`` and
its own ``multi_gpu_train.json``, so the same names give a list of its own files.
"""

from __future__ import annotations

from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent
ENGINE_CONFIGS = ("train", "multi_gpu_train")
SUFFIXES = (".yaml", ".json", ".yml")


def engine_config(name: str) -> Path:
    """``common/engine/<name>.yaml`` (``train`` or ``multi_gpu_train``)."""
    if name not in ENGINE_CONFIGS:
        raise ValueError(f"the engine has no config {name!r}; it has {list(ENGINE_CONFIGS)}")
    return ENGINE_DIR / f"{name}.yaml"


def bundle_config(bundle_dir: str | Path, name: str) -> Path | None:
    """The bundle's own ``configs/<name>.yaml`` (or ``.json``), or None."""
    for suffix in SUFFIXES:
        path = Path(bundle_dir) / "configs" / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def has_engine(path: Path) -> bool:
    """Whether a bundle's train config already holds the engine (a packaged bundle's merged ``train.json``)."""
    import json

    import yaml

    text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return isinstance(loaded, dict) and "training" in loaded


def config_files(bundle_dir: str | Path, *names: str) -> list[Path]:
    """The files of ``--config_file`` for the configs ``names`` of the bundle in ``bundle_dir``, in order.

    ``config_files("bundles/tmca", "train", "evaluate")`` is ``[bundles/tmca/configs/train.yaml,
    common/engine/train.yaml, bundles/tmca/configs/evaluate.yaml]``; ``train`` is implied when ``names`` does
    not start with it. ``multi_gpu_train`` is the engine's followed by the bundle's own (its DDP settings).
    ``config_files("bundles/tmca", "inference")`` is ``[.../train.yaml, .../inference.yaml]``: inference
    uses the transforms of the bundle's train.yaml (not the engine). A packaged bundle holds the engine in its
    own files (``scripts/package.py``), so there each name is one file of its own.
    """
    names = tuple(names) or ("train",)
    train = bundle_config(bundle_dir, "train")
    packaged = train is not None and has_engine(train)
    if names[0] != "train" and not (names[0] == "inference" and packaged):
        names = ("train", *names)
    files: list[Path] = []
    for name in names:
        own = bundle_config(bundle_dir, name)
        if own is None:
            raise FileNotFoundError(f"{Path(bundle_dir) / 'configs'} has no {name}.yaml (or .json)")
        if name in ENGINE_CONFIGS and name != "train" and not packaged:
            files.append(engine_config(name))
        files.append(own)
        if name == "train" and not packaged and "inference" not in names:
            files.append(engine_config("train"))
    return files


def config_file_arg(bundle_dir: str | Path, *names: str, relative_to: str | Path | None = None) -> str:
    """``config_files`` as the value of ``--config_file``: ``"['a.yaml','b.yaml']"`` (paths relative to
    ``relative_to`` where they lie below it)."""
    def shown(path: Path) -> str:
        if relative_to is not None:
            try:
                return str(path.resolve().relative_to(Path(relative_to).resolve()))
            except ValueError:
                pass
        return str(path)

    return "[" + ",".join(f"'{shown(p)}'" for p in config_files(bundle_dir, *names)) + "]"
