"""Every module of the shared packages is reachable as an attribute of its package once the top package alone is
imported, as the bundle configs use them (``$import common`` then ``common.evaluation.instances...``). The
packages import their modules plainly (no lazy lists); a module added without being imported by its package's
``__init__.py`` raises AttributeError there (``common.evaluation.instances`` once did). Checked in a fresh
interpreter, where nothing else has imported the module first."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(".".join(p.parent.relative_to(ROOT).parts) for root in ("common", "transforms")
                  for p in (ROOT / root).glob("**/__init__.py"))

PROBE = """
import functools, json, sys
import common, transforms
missing = {}
for package, names in json.loads(sys.argv[1]).items():
    try:
        module = functools.reduce(getattr, package.split(".")[1:], sys.modules[package.split(".")[0]])
    except AttributeError:
        missing[package] = ["(the package itself)"]
        continue
    missing[package] = [name for name in names if not hasattr(module, name)]
print(json.dumps(missing))
"""


def _modules(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return [p.stem for p in folder.glob("*.py") if p.stem != "__init__"] + \
        [p.name for p in folder.iterdir() if (p / "__init__.py").is_file()]


@pytest.fixture(scope="module")
def missing() -> dict:
    wanted = json.dumps({package: _modules(package) for package in PACKAGES})
    proc = subprocess.run([sys.executable, "-c", PROBE, wanted], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_an_attribute_of_its_package(package, missing):
    assert not missing[package], f"{package} does not expose {missing[package]} after `import common, transforms`"
