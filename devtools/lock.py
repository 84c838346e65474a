"""The lock files: every package fencex installs, pinned to one version with the hashes of its files.

- ``requirements/dev.lock``: ``.[dev]``, what ``./dev`` setup (so CI) installs into ``.venv``;
- ``requirements/service.lock``: ``.[service]``, what the Dockerfile installs into the images, resolved
  within the dev lock, so the images run the very versions the tests ran.

``./dev lock`` (``python -m devtools.lock``) writes both with ``uv pip compile`` for Python 3.11 on
x86-64 Linux (the images' and CI's), keeping every pin that still satisfies pyproject.toml; ``./dev lock
--upgrade`` moves everything to the newest releases that do, ``--upgrade-package NAME`` one package.
Each file's header records a digest of pyproject.toml's dependency lists: ``--check`` (run by ``./dev``
before it installs, and by tests/unit/test_images.py) fails when they changed since the lock was made.
The check needs only the standard library, so it runs before ``.venv`` exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK_DIR = ROOT / "requirements"
# extra -> its lock; dev first: the service lock is resolved within it
LOCKS = {"dev": LOCK_DIR / "dev.lock", "service": LOCK_DIR / "service.lock"}
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-unknown-linux-gnu"
DIGEST_MARK = "# pyproject-dependencies-sha256: "
COMMAND = "./dev lock"

HEADERS = {
    "dev": "fencex's `.[dev]`, locked: what ./dev setup (and so CI) installs with pip --require-hashes.",
    "service": "fencex's `.[service]`, locked within requirements/dev.lock: what the Dockerfile installs.",
}


def dependencies_digest(pyproject_text: str) -> str:
    """A digest of what the locks are made from: requires-python, the dependencies and every extra
    (each list sorted: reordering is no change; the rest of pyproject.toml does not count)."""
    project = tomllib.loads(pyproject_text)["project"]
    inputs = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in project.get("optional-dependencies", {}).items()},
        "target": [PYTHON_VERSION, PYTHON_PLATFORM],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    """The digest a lock file's header records, None if it has none."""
    for line in lock_text.splitlines():
        if line.startswith(DIGEST_MARK):
            return line[len(DIGEST_MARK) :].strip()
        if line and not line.startswith("#"):
            break
    return None


def stale_locks(root: Path = ROOT) -> list[str]:
    """The lock files (relative paths) missing or made from other dependencies than pyproject.toml's."""
    want = dependencies_digest((root / "pyproject.toml").read_text())
    stale = []
    for lock in LOCKS.values():
        path = root / lock.relative_to(ROOT)
        if not path.exists() or recorded_digest(path.read_text()) != want:
            stale.append(str(lock.relative_to(ROOT)))
    return stale


def header(extra: str, digest: str) -> str:
    return (
        f"# {HEADERS[extra]}\n"
        f"# Made by `{COMMAND}` (devtools/lock.py: uv pip compile for Python {PYTHON_VERSION}, {PYTHON_PLATFORM}).\n"
        f"# Do not edit: `{COMMAND}` after changing pyproject.toml's dependencies, `{COMMAND} --upgrade` for\n"
        "# newer releases. The digest below is of pyproject.toml's dependency lists when this was made.\n"
        f"{DIGEST_MARK}{digest}\n"
    )


def compile_lock(extra: str, upgrade: list[str]) -> None:
    out = LOCKS[extra]
    cmd = [sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml", "--extra", extra]
    cmd += ["--python-version", PYTHON_VERSION, "--python-platform", PYTHON_PLATFORM]
    cmd += ["--generate-hashes", "--no-header", "--quiet", "--output-file", str(out.relative_to(ROOT))]
    if extra != "dev":
        cmd += ["--constraint", str(LOCKS["dev"].relative_to(ROOT))]
    cmd += upgrade
    subprocess.run(cmd, cwd=ROOT, check=True)
    out.write_text(header(extra, dependencies_digest(PYPROJECT.read_text())) + out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only check that the locks match pyproject.toml")
    parser.add_argument("--upgrade", action="store_true", help="move every package to its newest allowed release")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="only this one")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_locks()
        if stale:
            print(
                f"{', '.join(stale)}: made from other dependencies than pyproject.toml's; run {COMMAND}",
                file=sys.stderr,
            )
            return 1
        return 0
    upgrade = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        upgrade += ["--upgrade-package", name]
    LOCK_DIR.mkdir(exist_ok=True)
    for extra in LOCKS:
        compile_lock(extra, upgrade)
        print(f"{LOCKS[extra].relative_to(ROOT)}: {len(pinned(LOCKS[extra].read_text()))} packages")
    return 0


def pinned(lock_text: str) -> dict[str, str]:
    """The lock's pins: normalized project name -> version."""
    pins = {}
    for line in lock_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            pins[normalize(name.split("[")[0])] = rest.split()[0].rstrip("\\").split(";")[0].strip()
    return pins


def normalize(name: str) -> str:
    """PEP 503's normal form of a project name."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


if __name__ == "__main__":
    sys.exit(main())
