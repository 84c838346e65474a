"""What ships (``fencex`` and ``services``, the packages pyproject.toml installs and the images
copy) depends on no development code: ``devtools`` (local servers, the stack) and ``bench``
stay out of the production package and images (issue 10, item 6)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).parents[2]
SHIPPED = ["fencex", "services"]
DEVELOPMENT = ["devtools", "bench", "tests"]


def shipped_modules() -> list[str]:
    names = []
    for package in SHIPPED:
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]
    return sorted(names)


def development_modules_loaded(modules: list[str]) -> set[str]:
    """Import ``modules`` in a fresh interpreter; the development packages that got loaded."""
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(DEVELOPMENT)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_no_shipped_module_imports_development_code():
    modules = shipped_modules()
    assert {"fencex.stream.loop", "services.api.app", "services.simulator.herd"} <= set(modules)
    assert development_modules_loaded(modules) == set()


def test_the_check_sees_development_code():
    assert development_modules_loaded(["fencex.fence", "devtools.localserver"]) == {"devtools"}


def test_only_the_shipped_packages_are_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = find_packages(str(ROOT), include=config["include"])
    assert {p.split(".")[0] for p in installed} == set(SHIPPED)
    for dockerfile in [*ROOT.glob("Dockerfile"), *ROOT.glob("services/*/Dockerfile")]:
        copied = {line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")}
        assert not copied & set(DEVELOPMENT), f"{dockerfile} copies development code"
