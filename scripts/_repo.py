"""The repository as the command-line tools see it: its root on ``sys.path``, and its bundles.

A bundle is a folder ``bundles/<name>/`` with ``configs/train.yaml``; the tools find bundles there
and read what they need from the bundle's own configs and metadata, so adding a bundle touches only
its folder (plus its tests and a README row).

Every tool runs its ``main`` through :func:`run_cli`, which refuses a mistyped flag before any work.
"""

import inspect
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bundle_names(with_demo: bool = False) -> list[str]:
    """The bundles in ``bundles/`` (those with a ``configs/demo.yaml`` when ``with_demo``)."""
    wanted = "demo.yaml" if with_demo else "train.yaml"
    return sorted(p.parent.parent.name for p in (ROOT / "bundles").glob(f"*/configs/{wanted}"))


def bundle_folder(name: str) -> Path:
    from common.core.flags import did_you_mean

    folder = ROOT / "bundles" / name
    if not (folder / "configs" / "train.yaml").is_file():
        raise ValueError(f"no bundle {name!r};{did_you_mean(str(name), bundle_names())} bundles: {bundle_names()}")
    return folder


def metadata(name: str) -> dict:
    from common.data.file_reading import read_json

    return read_json(bundle_folder(name) / "configs" / "metadata.json")


class BundleConfig:
    """A bundle's merged configs as its files say, parsed with its own ``scripts`` package (as ``monai.bundle
    run`` does): where they say ``scripts`` (``$import scripts``, ``_target_: scripts.network.TMCA``) the parsed
    config names the bundle's package as this process imported it (``bundles.tmca.scripts``,
    :func:`transforms.base.describe.bundle_config`), so several bundles' configs are parsed in one process side
    by side and no module is swapped."""

    def __init__(self, name: str, files, overrides: dict | None = None):
        from monai.bundle import ConfigParser

        from common.engine.config_files import config_files

        self.folder = bundle_folder(name)
        self.parser = ConfigParser()
        self.parser.read_config([str(f) for f in config_files(self.folder, *files)])
        self.parser.update(overrides or {})

    def __getitem__(self, key):
        return self.parser[key]

    def __contains__(self, key) -> bool:
        return key in self.parser

    def get_parsed_content(self, key: str, **kwargs):
        """``key`` built from the config as it reads now, with ``scripts`` naming the bundle's package."""
        from monai.bundle import ConfigParser

        from transforms.base.describe import bundle_config

        parser = ConfigParser(bundle_config(self.parser.get(), self.folder))
        return parser.get_parsed_content(key, **{"lazy": False, **kwargs})


def read_bundle_config(name: str, files=("train",), overrides: dict | None = None) -> BundleConfig:
    return BundleConfig(name, files, overrides)


# ---------------------------------------------------------------------------------------------
# the command line of a tool
# ---------------------------------------------------------------------------------------------
HELP_FLAGS = ("h", "help")


def run_cli(main: Callable) -> None:
    """Run ``main`` as the tool's command line (``fire.Fire(main)``) once :func:`check_flags` has passed;
    otherwise print what is wrong and exit with status 2 before any work."""
    import fire

    from transforms.base.errors import ConfigurationError

    try:
        check_flags(main, sys.argv[1:])
    except ConfigurationError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    fire.Fire(main)


def check_flags(main: Callable, args: Sequence[str]) -> None:
    """Refuse a command line that ``fire`` would run with a flag or a value ``main`` never sees.

    fire takes ``--name value``, ``--name=value``, ``--name`` (true), ``--noname`` (false), ``-n`` (the one
    argument starting with n) and ``--class-name`` for ``--class_name``; a flag of none of ``main``'s
    arguments would be dropped (the job runs with the default and fails, or writes the wrong output, only
    afterwards), and so would a value no argument is left for. ``-h``/``--help`` and fire's own flags after
    a lone ``--`` pass.
    """
    from transforms.base.errors import ConfigurationError
    from common.core.flags import NOTHING_RUN, did_you_mean

    parameters = inspect.signature(main).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    names = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    tool = _tool_name(main)
    flags, values = _split_command_line(args)
    given = set()
    for token, takes_value in flags:
        flag = token.split("=", 1)[0]
        key = flag.lstrip("-").replace("-", "_")
        name = _argument_of(key, names, bool_form="=" not in token and not takes_value)
        if name is None and key not in HELP_FLAGS:
            known = ", ".join("--" + n for n in names)
            hint = did_you_mean(key, names, prefix="--") or f" Its flags: {known}."
            raise ConfigurationError(f"{flag} is not a flag of {tool}, so it would be ignored.{hint} {NOTHING_RUN}")
        given.add(name)
    room = len(names) - len(given & set(names))
    if len(values) > room and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        extra = " ".join(values[room:])
        raise ConfigurationError(f"{tool} takes no value {extra!r}: every argument is already given (a value with "
                                 f"spaces needs quotes, a flag needs --). {NOTHING_RUN}")


def _split_command_line(args: Sequence[str]) -> tuple[list[tuple[str, bool]], list[str]]:
    """As fire reads the arguments before its own (those after the last lone ``--``): the flags, each with
    whether it takes the next argument as its value, and the values standing alone (positional)."""
    args = list(args)
    if "--" in args:
        args = args[: len(args) - 1 - args[::-1].index("--")]
    flags, values, i = [], [], 0
    while i < len(args):
        token = args[i]
        if _is_flag(token):
            takes_value = "=" not in token and i + 1 < len(args) and not _is_flag(args[i + 1])
            flags.append((token, takes_value))
            i += 2 if takes_value else 1
        else:
            values.append(token)
            i += 1
    return flags, values


def _is_flag(token: str) -> bool:
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def _argument_of(key: str, names: Sequence[str], bool_form: bool) -> str | None:
    """The argument a flag sets, as fire finds it (name, ``no<name>``, one-letter shortcut); None if none."""
    if key in names:
        return key
    if bool_form and key.startswith("no") and key[2:] in names:
        return key[2:]
    starting = [n for n in names if len(key) == 1 and n.startswith(key)]
    return starting[0] if len(starting) == 1 else None


def _tool_name(main: Callable) -> str:
    source = Path(inspect.getsourcefile(inspect.unwrap(main)) or sys.argv[0]).resolve()
    return str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else source.name
