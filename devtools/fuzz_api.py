"""Fuzz the query API from its own OpenAPI document with schemathesis (every operation, every
check, stateful links), against a live API, Redis and broker.

    python -m devtools.fuzz_api --examples 500            # starts Redis, a broker and the API
    python -m devtools.fuzz_api --url http://127.0.0.1:8000 --admin-key K --examples 200

The test suite runs it quickly with a fixed seed (tests/integration/test_api_fuzz.py); this
command runs it as long as you like. Exit status 0: no failures.

Imported by schemathesis as its hooks module (``hooks`` in the generated config): positive
fence bodies get a geometry that JSON Schema cannot promise is valid (a closed ring that does not
cross itself) so the positive-data check tests what the API promises, while negative cases stay
as the fuzzer made them.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import schemathesis

from fencex.store.redis import key_id

ROOT = Path(__file__).parents[1]
# The fuzzing farm: a name no example or generator picks (so the fuzzer's own key management and
# transfers leave it alone); it owns the collar the OpenAPI examples name, so they are valid requests.
FUZZ_TENANT = os.environ.get("FENCEX_FUZZ_TENANT") or f"fuzz-farm-{uuid.uuid4().hex[:8]}"
EXAMPLE_DEVICE = "collar-7"
FUZZ_KEY_ID = os.environ.get("FENCEX_FUZZ_KEY_ID", "")  # the fuzzing farm's key: not to be revoked
# The fuzzing farm's own collar (claimed before the run): a name no example or generator picks, so
# the fuzzer's own transfers (PUT /admin/devices/...) do not take it away mid-run.
FUZZ_DEVICE = os.environ.get("FENCEX_FUZZ_DEVICE") or f"fuzz-collar-{uuid.uuid4().hex[:12]}"
# The statuses that mean "valid input, refused for a reason JSON Schema cannot state": the
# resource is not there (404), the id is taken (409), If-Match is stale (412), a limit (413, 429).
POSITIVE_OK = ["2xx", "401", "403", "404", "409", "412", "413", "429"]
# Invalid input is refused with 4xx: schemathesis's list, and 413 (the API refuses too much input so)
NEGATIVE_OK = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def _is_positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return mode is None or bool(getattr(mode, "is_positive", True))


def _valid_ring(seed: Any) -> list[list[float]]:
    """A small square near a generated position (or at 0, 0): a ring the core accepts."""
    lon, lat = 0.0, 0.0
    if isinstance(seed, list) and len(seed) >= 2 and all(isinstance(v, int | float) for v in seed[:2]):
        lon = max(-179.0, min(179.0, float(seed[0])))
        lat = max(-89.0, min(89.0, float(seed[1])))
    d = 0.01
    return [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]


def _first_position(coords: Any) -> Any:
    while isinstance(coords, list) and coords and isinstance(coords[0], list):
        coords = coords[0]
    return coords


def _repair(geometry: Any) -> Any:
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return geometry
    ring = _valid_ring(_first_position(geometry.get("coordinates")))
    if geometry["type"] == "Polygon":
        return {**geometry, "coordinates": [ring]}
    return {**geometry, "coordinates": [[ring]]}


def _repair_schedule(schedule: Any) -> Any:
    """A schedule in a known time zone, its windows' dates ordered and within the years it allows."""
    if not isinstance(schedule, dict):
        return schedule
    out = {**schedule, "timezone": "Europe/Stockholm"} if "timezone" in schedule else dict(schedule)
    if isinstance(out.get("windows"), list):
        windows = []
        for w in out["windows"]:
            if isinstance(w, dict) and w.get("kind") == "absolute":
                w = {**w, "from": "2026-11-22T06:00:00+01:00", "to": "2026-11-29T18:00:00+01:00"}
            elif isinstance(w, dict):
                w = {**w, **{k: d for k, d in (("valid_from", "2026-11-22"), ("valid_to", "2026-12-22")) if k in w}}
            windows.append(w)
        out["windows"] = windows
    return out


def _repair_schedules(body: dict[str, Any]) -> dict[str, Any]:
    """Schedules wherever a body holds them: a fence's properties, a PATCH, a rotation's fences."""
    if "schedule" in body:
        body = {**body, "schedule": _repair_schedule(body["schedule"])}
    props = body.get("properties")
    if isinstance(props, dict) and "schedule" in props:
        body = {**body, "properties": {**props, "schedule": _repair_schedule(props["schedule"])}}
    fences = body.get("fences")
    if isinstance(fences, dict):  # a rotation: fence id -> step
        body = {**body, "fences": {k: _repair_schedules(v) if isinstance(v, dict) else v for k, v in fences.items()}}
    return body


def _repair_body(body: dict[str, Any]) -> dict[str, Any]:
    body = _repair_schedules(body)
    if "geometry" in body:
        body = {**body, "geometry": _repair(body["geometry"])}
    if body.get("polygon") is not None:
        body = {**body, "polygon": _repair(body["polygon"])}
    if isinstance(body.get("features"), list):
        seen: set[Any] = set()
        features = []
        for f in body["features"]:
            if isinstance(f, dict) and "geometry" in f:
                f = _repair_schedules({**f, "geometry": _repair(f["geometry"])})
                if f.get("id") is not None:
                    if f["id"] in seen:
                        continue  # an id twice in one collection is refused, rightly
                    seen.add(f["id"])
            features.append(f)
        body = {**body, "features": features}
    return body


def _fix(item: Any) -> Any:
    """A generated fix about the fuzzing farm's own collar, at a time the API accepts."""
    if not isinstance(item, dict):
        return item
    return {**item, "device_id": FUZZ_DEVICE, "ts": int(time.time() * 1000)}


def _own(item: Any) -> Any:
    """A fix naming some well-formed device id names the fuzzing farm's own collar instead."""
    device = item.get("device_id") if isinstance(item, dict) else None
    if isinstance(device, str) and 0 < len(device) <= 128:
        return {**item, "device_id": FUZZ_DEVICE}
    return item


def _own_mob(body: dict[str, Any]) -> dict[str, Any]:
    """A mob names only the farm's own fences and collars: none of the generated fence ids is
    promised to be the farm's (left out), any collars are the farm's own collar."""
    out = dict(body)
    if isinstance(out.get("fences"), list):
        out["fences"] = []
    if isinstance(out.get("devices"), list) and out["devices"]:
        out["devices"] = [FUZZ_DEVICE]  # in another mob already: 409, a valid refusal
    return out


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    """Every phase, examples included: fixes are about the farm's own collar (a well-formed id
    stays well formed, so negative cases stay negative)."""
    if getattr(getattr(ctx, "operation", None), "path", None) != "/locations":
        return body
    return [_own(b) for b in body] if isinstance(body, list) else _own(body)


_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_GRAZING = ("/grazing", "/fences/{fence_id}/grazing")


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) and _DAY.match(value) else None
    except ValueError:
        return None


def _repair_days(query: Any) -> Any:
    """A grazing range the API takes (rules JSON Schema cannot state): days that exist, ``from`` not
    after ``to`` and at most 366 days (else ``to`` is made ``from``; without ``to``, today is)."""
    if not isinstance(query, dict):
        return query
    out = dict(query)
    for k in ("from", "to"):
        if isinstance(out.get(k), str) and _DAY.match(out[k]) and _day(out[k]) is None:
            out[k] = "2026-11-20"  # 2026-02-30 and the like: well formed, no such day
    first, last = _day(out.get("from")), _day(out.get("to"))
    if first is not None and (last is None or not 0 <= (last - first).days < 366):
        out["to"] = out["from"]
    return out


_FENCE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # fence and mob ids alike
_PUT_ID = {"/fences/{fence_id}": "fence_id", "/mobs/{mob_id}": "mob_id"}  # PUTs whose body may repeat the URL's id


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Last, after the stateful phase filled the request from links: a well-formed body id of a
    PUT /fences/{fence_id} is the URL's (a rule across fields that JSON Schema cannot state; a
    malformed id is left as it is, so negative cases stay negative)."""
    body = case.body
    param = _PUT_ID.get(case.operation.path)
    if param is not None and case.method.upper() == "PUT" and isinstance(body, dict):
        fid = (case.path_parameters or {}).get(param)
        if isinstance(body.get("id"), str) and _FENCE_ID.match(body["id"]) and isinstance(fid, str):
            body["id"] = fid


def _ordered_range(query: Any) -> Any:
    """A track's ``from`` no later than its ``to`` (from after to is refused, rightly)."""
    if not isinstance(query, dict) or not all(isinstance(query.get(k), str) for k in ("from", "to")):
        return query
    try:
        start, end = datetime.fromisoformat(query["from"]), datetime.fromisoformat(query["to"])
        later = start > end
    except (ValueError, TypeError):  # not a time both can be compared as: left as generated
        return query
    return {**query, "from": query["to"], "to": query["from"]} if later else query


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """Positive cases keep the promises JSON Schema cannot state: valid rings; fixes of the
    farm's own collar at a current time; a transfer's body naming the device of its URL; a mob
    naming only the farm's own collar and no fence; a track's range in order; a farm's time zone that
    exists; a grazing range of days that exist, in order."""
    if not _is_positive(case):
        return case
    body = case.body
    path = case.operation.path
    if isinstance(body, dict):
        body = _repair_body(body)
        if path in _PUT_ID and "id" in body:
            # the body's id, if any, must be the URL's; the stateful phase fills the URL from a link
            # after this hook, so a positive case leaves the (optional) body id out
            body = {k: v for k, v in body.items() if k != "id"}
        if path in ("/mobs", "/mobs/{mob_id}"):
            body = _own_mob(body)
        if path.endswith("/herd/settings") and "timezone" in body:
            body = {**body, "timezone": "Europe/Stockholm"}  # an IANA name: a rule JSON Schema cannot state
    if path == "/locations":
        body = [_fix(b) for b in body] if isinstance(body, list) else _fix(body)
    if path in _GRAZING:
        case.query = _repair_days(case.query)
    case.body = body
    if path == "/devices/{device_id}/track":
        case.query = _ordered_range(case.query)
    params = case.path_parameters or {}
    if params.get("key_id") and params.get("key_id") == FUZZ_KEY_ID:  # never revoke the fuzzer's own key
        case.path_parameters = {**params, "key_id": "0" * 16}
    return case


def config(base: str, tenant_key: str, admin_key: str, examples: int, seed: int, hooks: bool = True) -> str:
    """A schemathesis.toml for this API: a farm's key everywhere, the admin key for /admin."""
    lines = [
        f'base-url = "{base}"',
        f"seed = {seed}",
        "request-timeout = 10",
        "max-stream-events = 1",
        *(['hooks = "devtools.fuzz_api"'] if hooks else []),
        f'headers = {{ Authorization = "Bearer {tenant_key}" }}',
        "[generation]",
        f"max-examples = {examples}",
        'database = "none"',
        "[checks.positive_data_acceptance]",
        f"expected-statuses = {POSITIVE_OK!r}".replace("'", '"'),
        "[checks.negative_data_rejection]",
        f"expected-statuses = {NEGATIVE_OK!r}".replace("'", '"'),
        "[[operations]]",
        'include-path-regex = "^/admin/"',
        f'headers = {{ Authorization = "Bearer {admin_key}" }}',
        "[[operations]]",
        'include-path = "/keys/rotate"',  # rotating the fuzzer's own key would lock it out
        "enabled = false",
        "[[operations]]",
        'include-path = "/events/stream"',  # endless by design: tests/integration/test_api_limits.py
        "enabled = false",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    returncode: int
    output: str
    operations: int
    cases: int


def fuzz(
    base: str, tenant_key: str, admin_key: str, examples: int = 20, seed: int = 42, workdir: Path | None = None
) -> Result:
    """Run schemathesis against a running API; the figures come from its JSON report."""
    work = workdir or Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    cfg = work / "schemathesis.toml"
    cfg.write_text(config(base, tenant_key, admin_key, examples, seed))
    report = work / "report.ndjson"
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(cfg),
        "--no-color",
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--workers",
        "1",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), FENCEX_FUZZ_DEVICE=FUZZ_DEVICE, FENCEX_FUZZ_KEY_ID=key_id(tenant_key))
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    text = out.stdout + out.stderr
    return Result(out.returncode, text, *figures(text))


def figures(text: str) -> tuple[int, int]:
    """Operations tested and test cases generated, from schemathesis's summary."""
    ops = re.search(r"API Operations:\s*\n?\s*Selected:\s*(\d+)/(\d+)", text)
    tested = re.search(r"Tested:\s*(\d+)", text)
    cases = re.search(r"Test cases:\s*\n?\s*(\d+) generated", text)
    n_ops = int(tested.group(1)) if tested else int(ops.group(1)) if ops else 0
    return n_ops, int(cases.group(1)) if cases else 0


def prepare(base: str, admin_key: str) -> str:
    """The fuzzing farm, owning the collar the OpenAPI examples name and its own; returns its key."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    made = httpx.post(f"{base}/admin/tenants", json={"id": FUZZ_TENANT}, headers=admin)
    if made.status_code == 409:  # a running API fuzzed before
        made = httpx.post(f"{base}/admin/tenants/{FUZZ_TENANT}/keys", headers=admin)
    made.raise_for_status()
    key = str(made.json()["api_key"])
    for device in (EXAMPLE_DEVICE, FUZZ_DEVICE):
        r = httpx.put(f"{base}/admin/devices/{device}", json={"tenant": FUZZ_TENANT}, headers=admin)
        r.raise_for_status()
    return key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200, help="test cases per operation and phase")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--url", help="a running API (else one is started, with Redis and a broker)")
    ap.add_argument("--admin-key", default="fuzz-admin-key")
    args = ap.parse_args()
    if args.url:
        sys.exit(_run(args.url, args.admin_key, args))
    from devtools.localserver import free_port, start_broker, start_redis

    logs = Path(tempfile.mkdtemp(prefix="fuzz-api-logs-"))
    with start_redis(logdir=logs) as redis, start_broker(logdir=logs) as broker:
        port = free_port()
        env = dict(
            os.environ,
            FENCEX_REDIS_URL=f"redis://{redis.address}/0",
            FENCEX_KAFKA_BOOTSTRAP=broker.address,
            FENCEX_PORT=str(port),
            FENCEX_HOST="127.0.0.1",
            FENCEX_ADMIN_KEY=args.admin_key,
            FENCEX_LOG_LEVEL="warning",
        )
        with (logs / "api.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # granian's workers too, stopped as a group
            )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"the API did not start; see {logs / 'api.log'}")
                time.sleep(0.2)
            code = _run(base, args.admin_key, args)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    sys.exit(code)


def _run(base: str, admin_key: str, args: argparse.Namespace) -> int:
    key = prepare(base, admin_key)
    result = fuzz(base, key, admin_key, args.examples, args.seed)
    print(result.output)
    print(f"fuzz_api: seed {args.seed}: {result.operations} operations, {result.cases} test cases")
    return result.returncode


if __name__ == "__main__":
    main()
