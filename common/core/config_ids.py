"""Which ids of a merged MONAI config a run reads: ``@id`` and ``%id`` references followed from the run's id.

Used to refuse a command-line override that the run would ignore (:func:`common.core.config.check_command_line`)
and to cut a packaged ``inference.json`` to what inference reads (``scripts/package.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

_REFERENCE = re.compile(r"[@%]([A-Za-z_][\w]*(?:#[\w]+)*)")


_MISSING = object()


def _node(config: Mapping, path: str):
    """The config node at ``path`` (``a#b#0``), or ``_MISSING``."""
    node: Any = config
    for part in path.split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def references(node) -> set[str]:
    """The ids (``a``, ``a#b``) that ``@`` references and ``%`` macros in a raw config node name."""
    if isinstance(node, Mapping):
        return set().union(set(), *(references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(set(), *(references(v) for v in node))
    if isinstance(node, str) and node[:1] in "$@%":
        return set(_REFERENCE.findall(node))
    return set()


def reachable_ids(config: Mapping, roots: Iterable[str]) -> set[str]:
    """The ids (``a``, ``a#b#0``) that running ``roots`` reads, following ``@id`` and ``%id`` references from
    the merged ``config`` (MONAI resolves nothing else). ``imports`` is always read."""
    seen: set[str] = set()
    todo = [r for r in (*roots, "imports") if _node(config, r) is not _MISSING]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for ref in references(_node(config, path)):
            if ref.startswith("_meta_"):
                continue
            # the longest prefix of the reference that the config holds (`@trained.network` -> trained)
            parts = ref.split("#")
            while parts and _node(config, "#".join(parts)) is _MISSING:
                parts.pop()
            if parts:
                todo.append("#".join(parts))
    return seen


def is_read(key: str, reached: set[str]) -> bool:
    """Whether an override of ``key`` (``image_size``, ``validate#dataset#data``) changes what a run with the
    ``reached`` ids reads: the key is one of them, inside one, or holds one."""
    return any(key == r or key.startswith(r + "#") or r.startswith(key + "#") for r in reached)


def standalone(config: Mapping, run_ids: Iterable[str]) -> dict:
    """``config`` cut to what ``run_ids`` read (top-level ids, in their order): a packaged inference.json
    that holds the bundle's transforms without its training settings."""
    reached = reachable_ids(config, run_ids)
    tops = {r.split("#")[0] for r in reached}
    return {k: v for k, v in config.items() if k in tops or k == "_meta_"}


def unread_overrides(files: Iterable[str | Path], run_id: str, keys: Iterable[str]) -> list[str]:
    """The ``keys`` (command-line overrides) that a run of ``run_id`` over the merged ``files`` never reads:
    ``--epochs`` for ``inferring``, or ``--image_size`` for ``evaluating`` (the checkpoint's processor
    decides it). MONAI would accept them and run without them."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files([str(f) for f in files])
    if run_id not in config:
        return []
    reached = reachable_ids(config, [run_id])
    return [k for k in keys if k.split("#")[0] in config and not is_read(k, reached)]
