"""The images are reproducible: they install requirements/service.lock (exact versions, checked against
hashes), the lock covers everything `.[service]` needs and agrees with the dev lock that CI installs, both
are current with pyproject.toml, and the images carry the OCI labels. Nothing here needs Docker: the
Dockerfile, the locks and the installed packages' metadata are read as text."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from devtools import lock

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SERVICES = ["api", "processor", "simulator"]
OCI = "org.opencontainers.image."


def lock_text(extra: str) -> str:
    return lock.LOCKS[extra].read_text()


def entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """A lock's entries: normalized name -> (version, hashes)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def requirements_of(extra: str) -> list[Requirement]:
    """What `.[extra]` asks for, directly: the dependencies and the extra, fencex's own extras expanded."""
    reqs, todo, seen = [Requirement(r) for r in PROJECT["dependencies"]], [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in PROJECT["optional-dependencies"][name]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "fencex":
                todo += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


def closure(extra: str) -> dict[str, set[str]]:
    """Every distribution `.[extra]` needs on this interpreter (normalized name -> extras asked of it), by
    walking the installed packages' metadata (./dev installs them from the dev lock)."""
    needed: dict[str, set[str]] = {}
    todo = requirements_of(extra)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        known = needed.get(name)
        if known is not None and req.extras <= known:
            continue
        needed[name] = (known or set()) | set(req.extras)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            pytest.fail(f"{name} (needed by .[{extra}]) is not installed: ./dev setup installs the dev lock")
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *needed[name]]):
                todo.append(sub)
    return needed


def dockerfile_stages() -> dict[str, str]:
    preamble, *blocks = re.split(r"^(?=FROM )", (ROOT / "Dockerfile").read_text(), flags=re.M)
    stages = {"preamble": preamble}
    for block in blocks:
        m = re.match(r"FROM (\S+)(?: AS (\S+))?", block)
        assert m is not None
        stages[m.group(2) or "final"] = block.replace("\\\n", " ")
    return stages


def labels(stage_text: str) -> dict[str, str]:
    out = {}
    for line in re.findall(r"^LABEL (.+)$", stage_text, re.M):
        out.update(dict(re.findall(r'(\S+?)="([^"]*)"', line)))
    return out


def args(stage_text: str) -> dict[str, str | None]:
    """The stage's ARG declarations: name -> default (None when it has none)."""
    found = re.findall(r"^ARG (\w+)(=(\S*))?$", stage_text, re.M)
    return {name: (default if eq else None) for name, eq, default in found}


# --- the Dockerfile installs the lock ---------------------------------------------------------------


def test_the_dockerfile_installs_the_service_lock_checked_against_its_hashes():
    build = dockerfile_stages()["build"]
    installs = re.findall(r"^RUN (/venv/bin/pip install .+)$", build, re.M)
    assert installs[0] == "/venv/bin/pip install --require-hashes -r requirements/service.lock"
    assert "COPY requirements/service.lock ./requirements/" in build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not [p for p in ignored if p.strip("/*").startswith("requirements")], "the lock reaches the build"
    # fencex alone after it, taking nothing more from the index; pip check fails the build on a gap
    assert installs[1] == "/venv/bin/pip install --no-deps . && /venv/bin/pip check"
    assert len(installs) == 2, "no other package reaches the image"


def test_the_dev_setup_installs_the_dev_lock():
    setup = (ROOT / "dev").read_text()
    assert "pip install -q --require-hashes -r requirements/dev.lock" in setup
    assert "pip install -q --no-deps -e ." in setup
    assert "-m devtools.lock --check" in setup  # a stale lock is refused before anything is installed


# --- the locks cover what they must -----------------------------------------------------------------


@pytest.mark.parametrize("extra", ["service", "dev"])
def test_every_requirement_is_pinned_within_its_range(extra):
    pins = entries(lock_text(extra))
    for req in requirements_of(extra):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {lock.LOCKS[extra].name}"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} is not {req}"


@pytest.mark.parametrize("extra", ["service", "dev"])
def test_the_lock_holds_everything_needed_and_every_pin_has_its_hashes(extra):
    pins = entries(lock_text(extra))
    needed = closure(extra)
    missing = sorted(set(needed) - set(pins))
    assert not missing, f"needed by .[{extra}] but not in {lock.LOCKS[extra].name}: {missing}"
    for name, (_, hashes) in pins.items():
        assert hashes, f"{name} has no hash"
    # the venv the tests run in is the lock's (./dev installs it so): what CI tests is what is locked
    drift = {n: (md.version(n), pins[n][0]) for n in needed if Version(md.version(n)) != Version(pins[n][0])}
    assert not drift, f"installed != locked (run ./dev setup): {drift}"


def test_the_service_lock_is_within_the_dev_lock():
    """The images run the very versions (and files) that CI tests."""
    dev, service = entries(lock_text("dev")), entries(lock_text("service"))
    assert set(service) <= set(dev)
    assert {n: service[n] for n in service} == {n: dev[n] for n in service}
    assert set(service) == set(closure("service")), "the service lock holds nothing the services do not need"


def test_the_locks_are_current_with_pyproject():
    assert lock.stale_locks() == [], "pyproject.toml's dependencies changed since the locks were made: ./dev lock"
    for extra in lock.LOCKS:
        assert lock.recorded_digest(lock_text(extra)) == lock.dependencies_digest((ROOT / "pyproject.toml").read_text())


def test_a_dependency_change_makes_the_locks_stale_and_nothing_else_does(tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    base = lock.dependencies_digest(text)
    added = text.replace('"tenacity>=9.0",', '"tenacity>=9.0",\n  "rich>=13",', 1)
    raised = text.replace('"orjson>=3.9"', '"orjson>=3.10"', 1)
    moved = '"tenacity>=9.0",\n  "msgpack>=1.0",'
    reordered = text.replace('"msgpack>=1.0",\n', "", 1).replace('"tenacity>=9.0",', moved)
    tooling = text.replace("line-length = 120", "line-length = 100")
    assert len({base, lock.dependencies_digest(added), lock.dependencies_digest(raised)}) == 3
    assert lock.dependencies_digest(reordered) == base and lock.dependencies_digest(tooling) == base
    # and the check reads them that way, for both locks
    (tmp_path / "requirements").mkdir()
    for extra, path in lock.LOCKS.items():
        (tmp_path / "requirements" / path.name).write_text(lock_text(extra))
    (tmp_path / "pyproject.toml").write_text(tooling)
    assert lock.stale_locks(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text(added)
    assert lock.stale_locks(tmp_path) == ["requirements/dev.lock", "requirements/service.lock"]
    assert lock.main(["--check"]) == 0  # the repository's own locks


# --- Kafka 4 and what the code imports ----------------------------------------------------------------


def test_the_kafka_clients_are_ones_that_work_with_kafka_4():
    """KIP-896 (Kafka 4.0) removed old protocol versions: aiokafka 0.13 negotiates every request per
    connection, and faust-streaming 0.12.1 is the first release that runs on it (deploy/README.md)."""
    service = {canonicalize_name(r.name): r for r in requirements_of("service")}
    for name, too_old, first in [("aiokafka", "0.12.0", "0.13.0"), ("faust-streaming", "0.12.0", "0.12.1")]:
        assert not service[name].specifier.contains(too_old), f"{name} {too_old} does not work with Kafka 4"
        assert service[name].specifier.contains(first)
    pins = entries(lock_text("service"))
    assert Version(pins["aiokafka"][0]) >= Version("0.13") and Version(pins["faust-streaming"][0]) >= Version("0.12.1")


def imported_distributions(package: str) -> dict[str, set[str]]:
    """Third-party top-level modules that ``package``'s code imports -> the distributions providing them."""
    provided = md.packages_distributions()
    first_party = {"fencex", "services", "devtools", "bench", "tests"}
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - first_party - set(sys.stdlib_module_names):
                found[top] = {canonicalize_name(d) for d in provided.get(top, [])}
    return found


def test_every_module_the_shipped_code_imports_is_a_declared_dependency():
    """Not merely one that happens to come along (``mode`` came with faust-streaming, undeclared)."""
    declared = {canonicalize_name(r.name) for r in requirements_of("service")}
    for package in ["fencex", "services"]:
        for module, dists in imported_distributions(package).items():
            assert dists & declared, f"{package}/ imports {module} ({sorted(dists)}), not declared in .[service]"


# --- the OCI labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_carries_the_oci_labels(service):
    stages = dockerfile_stages()
    found = labels(stages["runtime"]) | labels(stages[f"service-{service}"])
    keys = ["source", "version", "licenses", "title", "description", "revision", "created"]
    assert {OCI + k for k in keys} <= set(found)
    assert found[OCI + "title"] == f"fencex-{service}"
    assert found[OCI + "description"].startswith("fencex's ")
    assert found[OCI + "licenses"] == PROJECT["license"] == "MIT"
    # the build arguments behind them are in scope where they are used, with defaults where they have them
    declared = args(stages["preamble"])
    for value in found.values():
        for arg in re.findall(r"\$\{(\w+)\}", value):
            assert arg in args(stages["runtime"]), f"ARG {arg} is not declared in the runtime stage (it would be empty)"
            assert arg in declared
    assert found[OCI + "version"] == "${VERSION}" and found[OCI + "revision"] == "${REVISION}"
    assert declared["REVISION"] and declared["CREATED"]


def test_the_image_version_is_pyprojects():
    assert args(dockerfile_stages()["preamble"])["VERSION"] == PROJECT["version"]
