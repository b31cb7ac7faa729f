"""Typed construction from config values, and objects that describe how they were built.

``@configurable`` on a class (a network, an encoder, a loss) does two things when it is built:

1. **Typed arguments.** Each constructor argument is coerced to its annotation. This is the one
   place where command-line strings become values: ``python -m monai.bundle run ... --use_ltem
   false --limit null --alignment_levels "[]"`` hands the config the strings ``"false"``,
   ``"null"`` and a list; a ``bool`` argument gets ``False``, an ``int | None`` argument ``None``.
   Constructors themselves take typed values only. A value that cannot be read as its type
   raises, naming the class, the argument and the value.
2. **Self-description.** The call is recorded, and :func:`describe` returns it as a MONAI config
   (``{"_target_": "scripts.network.TMCA", "image_encoder": {"_target_": ...}, "use_ltem": false,
   ...}``) in plain values, which :func:`instantiate` builds again, reading it as data (never through
   MONAI's ``ConfigParser``, which would run a ``$`` expression or any ``_target_`` a stranger put there).
   Checkpoints carry it (:mod:`common.engine.checkpoints`), so evaluation, inference and export
   build the network that was trained instead of one restated in another config.

A class may name **pretrained arguments** (``@configurable(pretrained={"weights": None})``): the
values they take when the weights come from a checkpoint instead (no download, no local file).
:func:`describe` writes those values unless told that the part's weights are left out of the
checkpoint. A class may also define ``offline_arguments(self) -> dict``: what it needs to be built
without the files it read the first time (a Hugging Face model's config, MONCH's prompt sentences).

``@typed`` on a function does step 1 only (dataset builders and other config entry points).
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .values import as_bool
from .errors import ConfigurationError

__all__ = ["configurable", "typed", "coerce", "describe", "instantiate", "bundle_package", "bundle_config",
           "is_bundle_class", "target_name",
           "is_configurable", "check_description", "described_class", "remote_code_requested", "ConfigurationError"]

_NULL = {"null", "none", ""}
_MARKERS = ("$", "@", "%")  # strings MONAI's config parser would read as expressions or references


# ---------------------------------------------------------------------------- coercion
def _parse_literal(value: str):
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _is_sequence_hint(hint, origin) -> bool:
    return origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) or hint in (list, tuple)


def coerce(value: Any, hint: Any, where: str = "value") -> Any:
    """``value`` as the type ``hint`` says (see the module doc); raises :class:`ConfigurationError`."""
    if hint is Any or hint is inspect.Parameter.empty or hint is None:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        allows_none = type(None) in args
        if value is None or (allows_none and isinstance(value, str) and value.strip().lower() in _NULL):
            if allows_none:
                return None
            raise ConfigurationError(f"{where} must not be null")
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return coerce(value, member, where)
            except ConfigurationError as err:
                errors.append(err)
        raise errors[0] if errors else ConfigurationError(f"{where}: cannot read {value!r}")
    if value is None:
        return None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        try:
            return as_bool(value)
        except ValueError:
            raise ConfigurationError(f"{where} = {value!r} is not true/false") from None
    if hint is int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigurationError(f"{where} = {value!r} is not a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigurationError(f"{where} = {value!r} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. alignment level 32 written without quotes
        if isinstance(value, Path):
            return str(value)
        raise ConfigurationError(f"{where} = {value!r} is not a string")
    if _is_sequence_hint(hint, origin):
        if isinstance(value, str):
            parsed = _parse_literal(value)
            value = parsed if isinstance(parsed, (list, tuple)) else [v.strip() for v in value.strip("[]()").split(",")
                                                                       if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigurationError(f"{where} = {value!r} is not a list")
        if origin is tuple and len(args) >= 1 and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigurationError(f"{where} = {value!r} needs {len(args)} values")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
        if isinstance(value, str):
            value = _parse_literal(value)
        if not isinstance(value, collections.abc.Mapping):
            raise ConfigurationError(f"{where} = {value!r} is not a mapping")
        return value
    return value


@functools.lru_cache(maxsize=None)
def _signature_hints(func: Callable) -> tuple[inspect.Signature, dict]:
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception as err:  # an annotation that does not resolve is a programming error: say where
        raise TypeError(f"cannot read the annotations of {func.__qualname__}: {err}") from err
    return signature, hints


def _coerce_arguments(func: Callable, owner: str, args, kwargs, skip_first: bool):
    signature, hints = _signature_hints(func)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    names = list(signature.parameters)[1 if skip_first else 0:]
    for name in names:
        param = signature.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        bound.arguments[name] = coerce(bound.arguments[name], hints.get(name, Any), f"{owner}: argument '{name}'")
    return bound, names, signature


def typed(func: Callable) -> Callable:
    """Coerce a function's arguments to their annotations (see :func:`coerce`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        bound, _, _ = _coerce_arguments(func, func.__qualname__, args, kwargs, skip_first=False)
        return func(*bound.args, **bound.kwargs)

    return wrapper


# ---------------------------------------------------------------------------- recording
def configurable(cls: type | None = None, *, pretrained: Mapping[str, Any] | None = None,
                 sources: Iterable[str] | None = None, source_names: Mapping[str, Iterable[str]] | None = None):
    """Class decorator: typed constructor arguments and a recorded description (module doc).

    ``sources``: the arguments that say where the pretrained weights lie (a file, a folder, a hub id), which a
    user may point elsewhere when a model is loaded on another machine (:func:`relocate`); default: the
    ``pretrained`` arguments themselves. A source given as a path relative to the current folder is recorded as
    the absolute path it named (:func:`transforms.base.pretrained.anchored_source`), so the description builds
    the same part from any folder; hub ids, packaged model names and tags are recorded as given.
    ``source_names``: values of a source argument that the class reads as names, never as paths (timm's
    ``weights: timm``), recorded as given even where a file of that name lies in the current folder."""

    def decorate(klass: type) -> type:
        original = klass.__init__

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            bound, names, signature = _coerce_arguments(original, klass.__name__, (self, *args), kwargs, skip_first=True)
            if type(self) is klass:  # the outermost configurable class records the call
                recorded = {}
                for name in names:
                    if signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                        raise TypeError(f"@configurable {klass.__name__} cannot take *{name}")
                    if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(bound.arguments[name])
                    else:
                        recorded[name] = bound.arguments[name]
                _anchor_sources(klass, recorded)
                object.__setattr__(self, "_configured_with", recorded)
            original(*bound.args, **bound.kwargs)

        klass.__init__ = __init__
        klass._described_by_configurable = True  # what a description may name (described_class)
        klass._pretrained_arguments = dict(pretrained or {})
        klass._source_arguments = tuple(sources) if sources is not None else tuple(klass._pretrained_arguments)
        klass._source_names = {name: tuple(values) for name, values in (source_names or {}).items()}
        for name in (*klass._pretrained_arguments, *klass._source_arguments, *klass._source_names):
            if name not in inspect.signature(original).parameters:
                raise TypeError(f"{klass.__name__} has no argument '{name}' to mark as pretrained")
        return klass

    return decorate(cls) if cls is not None else decorate


def _anchor_sources(klass: type, recorded: dict) -> None:
    """The recorded pretrained sources of ``klass`` as they resolve from any folder (a relative path that
    exists from the current folder becomes absolute; :func:`transforms.base.pretrained.anchored_source`)."""
    from .pretrained import anchored_source

    for name in klass._source_arguments:
        value = recorded.get(name)
        if isinstance(value, str) and value not in klass._source_names.get(name, ()):
            recorded[name] = anchored_source(value)


def anchored_description_source(klass: type | None, name: str, value: Any) -> Any:
    """``value`` of argument ``name`` of ``klass`` as :func:`configurable` records it now (a relative local
    source made absolute): two descriptions of one part, one written before sources were recorded absolute,
    compare equal."""
    if klass is None or name not in getattr(klass, "_source_arguments", ()) or not isinstance(value, str) \
            or value in getattr(klass, "_source_names", {}).get(name, ()):
        return value
    from .pretrained import anchored_source

    return anchored_source(value)


def is_configurable(obj: Any) -> bool:
    return "_configured_with" in getattr(obj, "__dict__", {})


# where this code lives: "" in the repository, "scripts.tgseg." when scripts/package.py vendored it into a bundle
VENDOR_PREFIX = __name__[: -len("transforms.base.describe")]


def target_name(klass: type) -> str:
    """``module.Class`` as a bundle config of the repository names it: a bundle's own code is
    ``scripts.<module>`` (whatever name :func:`bundle_package` imported its package under), shared code
    ``common.<...>`` / ``transforms.<...>`` also when it runs vendored inside a packaged bundle, so a
    checkpoint reads the same wherever it was trained."""
    module = klass.__module__
    parts = module.split(".")
    own = max((p.__name__ for p in _PACKAGES.values() if module == p.__name__ or module.startswith(p.__name__ + ".")),
              key=len, default=None)  # the name bundle_package gave a bundle's package, whatever it is
    if own is not None:
        parts = ["scripts", *parts[len(own.split(".")):]]
    elif len(parts) > 2 and parts[0] == "bundles" and parts[2] == "scripts":
        parts = parts[2:]
    elif parts[0].startswith(_PACKAGE_PREFIX):
        parts = ["scripts", *parts[1:]]
    if len(parts) > 2 and parts[:2] == ["scripts", "tgseg"]:  # shared code vendored into a packaged bundle
        parts = parts[2:]
    module = ".".join(parts)
    if VENDOR_PREFIX and module.startswith(VENDOR_PREFIX):
        module = module[len(VENDOR_PREFIX):]
    return f"{module}.{klass.__qualname__}"


def describe(obj: Any, keep_pretrained: Iterable[Any] = ()) -> dict:
    """The MONAI config (plain values) that builds ``obj`` again.

    Nested configurable objects become nested configs. Their pretrained arguments take the values
    for "weights from a checkpoint" (:func:`configurable`), except for the objects in
    ``keep_pretrained``: parts whose weights the checkpoint leaves out and that load from their
    pretrained source again.
    """
    keep = {id(o) for o in keep_pretrained}
    return _describe(obj, "network", keep)


def _describe(obj: Any, path: str, keep: set[int]) -> dict:
    if not is_configurable(obj):
        raise ConfigurationError(
            f"{path}: {type(obj).__name__} is not @configurable, so a checkpoint cannot say how to build it")
    arguments = dict(obj._configured_with)
    if id(obj) not in keep:
        arguments.update(type(obj)._pretrained_arguments)
        if hasattr(obj, "offline_arguments"):
            arguments.update(obj.offline_arguments())
    config = {"_target_": target_name(type(obj))}
    for name, value in arguments.items():
        config[name] = _plain(value, f"{path}.{name}", keep)
    return config


def _plain(value: Any, path: str, keep: set[int]) -> Any:
    if is_configurable(value):
        return _describe(value, path, keep)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if value.startswith(_MARKERS):
            raise ConfigurationError(f"{path} = {value!r} starts with {value[0]!r}, which a MONAI config would read "
                                     "as an expression or a reference")
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]", keep) for i, v in enumerate(value)]
    if isinstance(value, collections.abc.Mapping):
        return {str(k): _plain(v, f"{path}.{k}", keep) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return value.item()
    if hasattr(value, "state_dict"):  # a module or optimiser built outside @configurable
        raise ConfigurationError(
            f"{path}: {type(value).__name__} is not @configurable, so a checkpoint cannot say how to build it")
    raise ConfigurationError(f"{path}: a {type(value).__name__} cannot be written as a config value")


# ---------------------------------------------------------------------------- a bundle's own package
# Every bundle names its own code ``scripts`` (its configs say ``$import scripts`` and ``_target_:
# scripts.network.TMCA``, as ``monai.bundle run`` finds it on the path). A process that uses several bundles
# (tests, the MONAI Label app, the repository's tools) imports each bundle's package under a name of its own
# and reads ``scripts.`` in that bundle's descriptions and configs as that name; no module is swapped.
_PACKAGE_PREFIX = "_tgseg_bundle_"
_PACKAGES: dict[Path, types.ModuleType] = {}


def bundle_package(bundle_root: str | Path) -> types.ModuleType:
    """The ``scripts`` package of the bundle in ``bundle_root``, imported once and never replaced.

    Its name: the name it already has in this process (``scripts`` in a ``monai.bundle run``, whose config
    imported it before any checkpoint is read: the checkpoint's classes are then the config's, never a second
    copy); else ``bundles.<name>.scripts`` for a bundle of this repository (as the tests import it), or
    ``scripts`` where the bundle's folder is the one on ``sys.path``; otherwise a name of its own
    (``_tgseg_bundle_<name>_<hash of the folder>``; a bundle's modules import each other and the shared code
    vendored into them relatively, scripts/package.py)."""
    folder = Path(bundle_root).resolve()
    package = _PACKAGES.get(folder)
    if package is not None and sys.modules.get(package.__name__) is package:
        return package
    init = folder / "scripts" / "__init__.py"
    if not init.is_file():
        raise ConfigurationError(f"{folder} is not a bundle folder: it has no scripts/__init__.py")
    # already imported (``scripts`` in a ``monai.bundle run``, whose config imported it first): the same modules,
    # never a second copy of the bundle's classes under another name
    package = _imported_package(init, folder.name)
    if package is None and _origin(f"bundles.{folder.name}.scripts") == init:
        package = importlib.import_module(f"bundles.{folder.name}.scripts")
    if package is None and _origin("scripts") == init:
        package = importlib.import_module("scripts")
    if package is None:
        name = f"{_PACKAGE_PREFIX}{folder.name}_{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package  # a new name: no other module is touched
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
    _PACKAGES[folder] = package
    return package


def _imported_package(init: Path, bundle: str) -> types.ModuleType | None:
    """A module of ``sys.modules`` loaded from ``init`` (a bundle's ``scripts/__init__.py``), if any: the
    repository's name for it first (``bundles.<name>.scripts``, as the tests import its classes), then
    ``scripts`` (a ``monai.bundle run``), then any other name (one :func:`bundle_package` gave it)."""
    found = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__dict__", {}).get("__file__") if isinstance(module, types.ModuleType) else None
        # cheap test first: only a package's __init__.py in a folder called scripts can be the one
        if isinstance(file, str) and file.endswith("__init__.py") and Path(file).parent.name == "scripts" \
                and _file_of(module) == init:
            found.append((name, module))
    preferred = {f"bundles.{bundle}.scripts": 0, "scripts": 1}
    found.sort(key=lambda item: (preferred.get(item[0], 2), item[0]))
    return found[0][1] if found else None


def _file_of(module: Any) -> Path | None:
    try:
        file = module.__dict__.get("__file__")  # not getattr: a lazy module may import on attribute access
        return Path(file).resolve() if isinstance(file, str) and file else None
    except (AttributeError, TypeError, OSError, ValueError):
        return None


def _origin(name: str) -> Path | None:
    """Where ``import name`` would load from, without running a module that is not imported yet (beyond the
    parent packages of ``name``)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def _in_package(target: str, package: types.ModuleType | None) -> str:
    """``scripts.network.TMCA`` -> the same name under the bundle's package (unchanged without one)."""
    if package is None or not (target == "scripts" or target.startswith("scripts.")):
        return target
    return package.__name__ + target[len("scripts"):]


def _vendors_shared_code(package: types.ModuleType | None) -> bool:
    """Whether a bundle's package carries the shared code (``<package>.tgseg``: a packaged bundle)."""
    return package is not None and any((Path(folder) / "tgseg" / "__init__.py").is_file()
                                       for folder in getattr(package, "__path__", ()))


def is_bundle_class(klass: type, package: types.ModuleType) -> bool:
    """Whether ``klass`` is defined by the bundle's own code, not by shared code its package imports or vendors
    (``scripts.tgseg.``, :mod:`scripts/package.py <package>`)."""
    module = klass.__module__
    return module.startswith(package.__name__ + ".") and not module.startswith(package.__name__ + ".tgseg.")


_IMPORT = re.compile(r"^\$\s*import\s+scripts(\.[\w.]+)?(\s+as\s+\w+)?\s*$")
_FROM = re.compile(r"^\$\s*from\s+scripts(\.[\w.]+)?\s+import\s+")


def bundle_config(config: Any, bundle_root: str | Path) -> Any:
    """A copy of a bundle's MONAI config (or a part of it) that names the bundle's package
    (:func:`bundle_package`) wherever it says ``scripts``: ``_target_: scripts.network.TMCA`` ->
    ``bundles.tmca.scripts.network.TMCA``, ``$import scripts`` -> ``$import bundles.tmca.scripts as scripts``
    (expressions keep ``scripts.x`` as the imported name), ``$from scripts.x import y`` likewise. MONAI's
    parser then builds the right bundle's classes in a process that parses several bundles' configs."""
    package = bundle_package(bundle_root)
    if package.__name__ == "scripts":
        return copy.deepcopy(config)

    def rewrite(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {key: (_in_package(value, package) if key == "_target_" and isinstance(value, str)
                          else rewrite(value)) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        if isinstance(node, str):
            found = _IMPORT.match(node)
            if found:
                return f"$import {package.__name__}{found.group(1) or ''}{found.group(2) or ' as scripts'}" \
                    if found.group(2) or not found.group(1) else node  # `import scripts.x` binds `scripts`: kept
            found = _FROM.match(node)
            if found:
                return f"$from {package.__name__}{found.group(1) or ''} import {node[found.end():]}"
        return node

    return rewrite(config)


def source_paths(config: Mapping, bundle_root: str | Path | None = None, loading: bool = False) -> dict[str, Any]:
    """``{"sam.checkpoint": "/weights/sam_vit_h_4b8939.pth", ...}``: where in a description the pretrained
    parts say their weights lie (each configurable class's ``sources``), with the values it holds.
    ``loading``: only the parts that load their weights from there when the description is built (a pretrained
    argument that differs from its value for weights from a checkpoint: ``sam.checkpoint`` not null,
    ``llava.pretrained`` true), not those whose weights the checkpoint holds."""
    found: dict[str, Any] = {}
    package = bundle_package(bundle_root) if bundle_root is not None else None

    def walk(node, path: str) -> None:
        if isinstance(node, Mapping):
            if "_target_" in node:
                klass = described_class(node["_target_"], path, package=package)
                offline = getattr(klass, "_pretrained_arguments", {})
                reads = not offline or any(node.get(arg, _ABSENT) != value for arg, value in offline.items())
                for name in getattr(klass, "_source_arguments", ()) if reads or not loading else ():
                    if name in node:
                        found[f"{path}.{name}" if path else name] = node[name]
            for key, value in node.items():
                if key != "_target_":
                    walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}.{i}" if path else str(i))

    walk(config, "")
    return found


_ABSENT = object()


def relocate(config: Mapping, sources: Mapping[str, Any], bundle_root: str | Path | None = None) -> dict:
    """A copy of a description whose pretrained parts load from ``sources`` (path in the description ->
    new file, folder or hub id; see :func:`source_paths`) instead of where they were found when the model
    was trained: a shared model on a machine that keeps SAM or LLaVA somewhere else."""
    config = copy.deepcopy(dict(config))
    if not sources:
        return config
    known = source_paths(config, bundle_root)
    for path, value in sources.items():
        if path not in known:
            listed = ", ".join(f"{k} ({v!r})" for k, v in known.items()) or "none"
            raise ConfigurationError(f"pretrained_sources: {path!r} is not a pretrained source of this model; "
                                     f"its sources: {listed}")
        node = config
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return config


def instantiate(config: Mapping, bundle_root: str | Path | None = None, where: str = "network",
                roots: Iterable[str] = ("scripts", "common", "transforms")) -> Any:
    """Build an object from a description, read as data (:func:`check_description`): every ``_target_`` must
    be a ``@configurable`` class of the shared code or of the bundle's own ``scripts`` package (the package of
    ``bundle_root``, :func:`bundle_package`), every other value a plain JSON value. Nothing in it is evaluated:
    no ``$`` expression, ``@`` reference, ``%`` macro or other callable, which MONAI's ``ConfigParser`` would
    run. ``roots``: the top-level packages whose classes it may name."""
    config = copy.deepcopy(dict(config))
    roots = tuple(roots)
    package = bundle_package(bundle_root) if bundle_root is not None else None
    check_description(config, where, roots=roots, package=package)
    return _build(config, roots, package)


def _build(node: Any, roots: tuple[str, ...], package: types.ModuleType | None) -> Any:
    if isinstance(node, Mapping):
        arguments = {key: _build(value, roots, package) for key, value in node.items() if key != "_target_"}
        if "_target_" not in node:
            return arguments
        klass = described_class(node["_target_"], "", roots, package=package)
        # an argument added after descriptions were written: its value when absent is what older models were
        # built with, not the new default (Co-Seg's prompt_patch_embed)
        for key, value in getattr(klass, "described_before", {}).items():
            arguments.setdefault(key, value)
        return klass(**arguments)
    if isinstance(node, list):
        return [_build(value, roots, package) for value in node]
    return node


# ---------------------------------------------------------------------------- a description is data
_OWN_ROOTS = ("scripts", "common", "transforms")  # a bundle's own package, the shared code
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def described_class(target: Any, where: str, roots: Iterable[str] = _OWN_ROOTS,
                    package: types.ModuleType | None = None) -> type:
    """The class a description's ``_target_`` names, checked before anything is imported (importing a module
    runs its code): a dotted name under ``roots`` (by default the bundle's ``scripts`` package and the shared
    code) naming a ``@configurable`` class. Anything else raises :class:`ConfigurationError` naming ``where``.
    ``package``: the bundle's package (:func:`bundle_package`) in which ``scripts.<module>`` is found; without
    it, the module imported as ``scripts``."""
    from pydoc import locate

    label = f"{where}._target_" if where else "_target_"
    roots = tuple(roots)
    if not isinstance(target, str) or not _DOTTED.match(target) or target.split(".")[0] not in roots:
        allowed = ", ".join(f"{r}.*" for r in roots)
        raise ConfigurationError(f"{label} = {target!r}: a description may name only classes of {allowed}")
    if target.split(".")[0] == "scripts":
        klass = locate(_in_package(target, package))
    else:  # shared code: the copy vendored into the bundle's package where it has one (scripts/package.py), as
        # the bundle's own modules import it, else this copy's
        klass = locate(f"{package.__name__}.tgseg.{target}") if _vendors_shared_code(package) else None
        klass = klass if klass is not None else locate(VENDOR_PREFIX + target)
    # decorated here, not inherited; the mark, not a registry of this copy, also admits the classes of a
    # packaged bundle, which registers them with the copy of this code vendored inside it
    if not (isinstance(klass, type) and klass.__dict__.get("_described_by_configurable") is True):
        raise ConfigurationError(f"{label} = {target!r} is not a class these bundles build from a description "
                                 "(@configurable)")
    return klass


def check_description(node: Any, where: str, classes: bool = True, roots: Iterable[str] = _OWN_ROOTS,
                      package: types.ModuleType | None = None) -> None:
    """Refuse anything in a description (or a part of it) that is not plain data, naming its key.

    Allowed: dicts with string keys, lists, strings, numbers, booleans and null; a ``_target_`` (only where
    ``classes``) naming a class :func:`described_class` accepts. Refused: strings that MONAI's config parser would read as an expression, a
    reference or a macro (``$``, ``@``, ``%``), its other special keys (``_requires_``, ``_disabled_``,
    ``_mode_``, ``_desc_``), and any other type. ``package``: as for :func:`described_class`."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                raise ConfigurationError(f"{where}: key {key!r} is not a string")
            if key == "_target_":
                if not classes:
                    raise ConfigurationError(f"{path} = {value!r}: this part of a description names no classes")
                described_class(value, where, roots, package)
            elif key.startswith("_") and key.endswith("_"):
                raise ConfigurationError(f"{path}: {key} is a MONAI config directive, not a setting")
            else:
                check_description(value, path, classes, roots, package)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_description(value, f"{where}[{i}]", classes, roots, package)
    elif isinstance(node, str):
        if node.startswith(_MARKERS):
            raise ConfigurationError(f"{where} = {node!r} starts with {node[0]!r}, which a MONAI config would read "
                                     "as an expression, a reference or a macro")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise ConfigurationError(f"{where}: a {type(node).__name__} is not a plain value")


def remote_code_requested(node: Any, where: str = "") -> list[str]:
    """The keys of a description that ask for code shipped with a pretrained model (``trust_remote_code``
    true): a checkpoint cannot grant that itself."""
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "trust_remote_code" and value not in (False, None, "false", "False", 0):
                found.append(path)
            else:
                found += remote_code_requested(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += remote_code_requested(value, f"{where}[{i}]")
    return found
