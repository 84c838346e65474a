"""Copy a store of the untagged key layout (fencex before Redis Cluster support) to the tagged one
(``fencex.store.base``; ``docs/design/redis-cluster.md``): ``python -m fencex.store.migrate --source URL
--target URL``. The source is one Redis; the target one Redis (the same one: the keys are renamed in
place, the old ones left for a later clean-up) or a cluster (``redis+cluster://``). Run it with the
workers and the API stopped.

Each key is copied with DUMP and RESTORE (its TTL kept) under its new name; the keys that one hash
held for everyone are split by group (the registered devices, the herd settings, the fence and mob
farm sets); a fence id's claim is written from its record; a device's state and track go to the
partition whose device set lists it (``where`` written for it: a device in none is reported and left
out, as a worker would not load it either). Not copied: the change feed (followers reload from the
store), the save tokens and the history's de-duplication markers (they expire within a day; an event
delivered again after the migration may then be in its farm's history twice).

It refuses a target that already holds a store of the tagged layout: one it migrated to before
(``{P}:migrated`` says ``done``) or one today's services have written (its recorded FENCEX_STORE_GROUPS or
a change feed): copying again would put the old layout's values back over everything written since
(RESTORE replaces). A run cut short (``{P}:migrated`` still says ``running``) is simply run again.
``--force`` copies anyway.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster

from fencex.errors import Misconfigured
from fencex.store.base import DEFAULT_GROUPS, Keys
from fencex.store.connection import cluster_seeds

PER_FARM = ("tenant-fences", "geo", "tenant-keys", "events", "tenant-mobs", "mob-of")  # {P}:{kind}:{t}
PER_FARM_AND_ONE = ("in", "mob", "alerts", "graze")  # {P}:{kind}:{t}:{x}
UNCHANGED = ("key", "tenants")  # the same name in both layouts
LEFT_OUT = ("changes", "seen", "saved")


@dataclass
class Report:
    copied: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # kind -> keys not copied
    unplaced: list[str] = field(default_factory=list)  # devices with a state but on no partition's list

    def skip(self, kind: str) -> None:
        self.left_out[kind] = self.left_out.get(kind, 0) + 1


def connect(url: str) -> Any:
    seeds = cluster_seeds(url)
    if seeds is None:
        return redis.Redis.from_url(url)
    first, nodes = seeds
    startup = [ClusterNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]  # unannotated in redis-py
    return RedisCluster.from_url(first, startup_nodes=startup)


def old_keys(src: redis.Redis, prefix: str) -> Iterator[str]:
    for raw in src.scan_iter(match=f"{prefix}:*", count=1000):
        key = cast(bytes, raw).decode()
        if "{" not in key:  # a key of the tagged layout (a migration in place run before) is not an old one
            yield key


def migrated(k: Keys) -> str:
    """The target's mark of a migration: ``running`` from its start, ``done`` once it is complete."""
    return f"{k.prefix}:migrated"


def check_target(dst: Any, k: Keys) -> None:
    """Misconfigured if the target holds a store of the tagged layout that this migration did not leave cut
    short (see the module's docstring)."""
    mark = cast(bytes | None, dst.get(migrated(k)))
    if mark == b"running":
        return
    if mark == b"done":
        raise Misconfigured(
            "the target was migrated already: copying again would put the old store's values back over "
            "everything written since (--force to copy anyway)"
        )
    if dst.exists(k.store_groups) or any(dst.exists(k.changes(g)) for g in k.all_groups):
        raise Misconfigured(
            "the target holds a store of the tagged layout written by fencex's services: copying the old one "
            "over it would undo what they wrote (--force to copy anyway)"
        )


def migrate(
    src: redis.Redis, dst: Any, prefix: str, topic: str, groups: int = DEFAULT_GROUPS, force: bool = False
) -> Report:
    k, report = Keys(prefix, groups), Report()
    if not force:
        check_target(dst, k)
    stored_groups = cast(bytes | None, dst.get(k.store_groups))
    if stored_groups is not None and int(stored_groups) != groups:
        raise Misconfigured(f"the target's store has {int(stored_groups)} groups, not --groups {groups}")
    dst.set(migrated(k), "running")
    keys = sorted(set(old_keys(src, prefix)) - {migrated(k), k.store_groups})  # in place: this run's own marks
    same = _same_server(src, dst)
    part_of: dict[str, int] = {}
    for key in keys:
        kind, _, rest = key[len(prefix) + 1 :].partition(":")
        if kind == "part" and rest.startswith(f"{topic}:"):
            n = int(rest.rsplit(":", 1)[1])
            part_of.update((m.decode(), n) for m in cast(set[bytes], src.smembers(key)))
    for key in keys:
        kind, _, rest = key[len(prefix) + 1 :].partition(":")
        if kind in UNCHANGED:
            if not same:
                _copy(src, dst, key, key)
                report.copied += 1
            continue
        if kind in LEFT_OUT:
            report.skip(kind)
            continue
        new = _renamed(k, kind, rest, topic, part_of, report)
        if new is not None:
            _copy(src, dst, key, new)
            report.copied += 1
            if kind == "gen":
                dst.sadd(k.partitions(topic), int(rest.rsplit(":", 1)[1]))
        elif not _split(src, dst, k, kind, key, rest):
            report.skip(kind)
    for d, n in part_of.items():
        dst.hset(k.where(k.group(d)), d, n)
    dst.set(k.store_groups, groups)  # what the services check their FENCEX_STORE_GROUPS against
    dst.set(migrated(k), "done")
    return report


def _renamed(k: Keys, kind: str, rest: str, topic: str, part_of: dict[str, int], report: Report) -> str | None:
    """The key's name in the tagged layout, or None when it is split or not copied."""
    if kind in PER_FARM:
        return {
            "tenant-fences": k.tenant_fences,
            "geo": k.geo,
            "tenant-keys": k.tenant_keys,
            "events": k.events,
            "tenant-mobs": k.tenant_mobs,
            "mob-of": k.mob_of,
        }[kind](rest)
    if kind in PER_FARM_AND_ONE:
        tenant, _, x = rest.partition(":")
        return {"in": k.inside, "mob": k.mob, "alerts": k.alerts, "graze": k.grazing}[kind](tenant, x)
    if kind in ("dev", "track"):
        n = part_of.get(rest)
        if n is None:
            if kind == "dev":
                report.unplaced.append(rest)
            return None
        return k.device(n, rest) if kind == "dev" else k.track(n, rest)
    if kind in ("part", "gen") and rest.startswith(f"{topic}:"):
        n = int(rest.rsplit(":", 1)[1])
        return k.partition(topic, n) if kind == "part" else k.generation(topic, n)
    return None


def _split(src: redis.Redis, dst: Any, k: Keys, kind: str, key: str, rest: str) -> bool:
    """Copy a key the tagged layout splits or derives (True), or say it is none of those (False)."""
    if kind == "fence":
        raw = cast(bytes | None, src.get(key))
        if raw is None:
            return True
        tenant = orjson.loads(raw)["tenant"]
        dst.set(k.fence(tenant, rest), raw)
        dst.sadd(k.fences(k.group(tenant)), rest)
        dst.set(k.fence_id(rest), tenant)
        return True
    if kind == "fences":
        return True  # rebuilt from the fences' records
    if kind in ("devices", "herd"):
        table = cast(dict[bytes, bytes], src.hgetall(key))
        for name, value in table.items():  # a device's registration to its group, a farm's settings to its farm's
            group = k.group(name.decode())
            dst.hset(k.devices(group) if kind == "devices" else k.herd(group), name, value)
        return True
    if kind == "mob-farms":
        for farm in cast(set[bytes], src.smembers(key)):
            dst.sadd(k.mob_farms(k.group(farm.decode())), farm)
        return True
    return False


def _copy(src: redis.Redis, dst: Any, old: str, new: str) -> None:
    dump = src.dump(old)
    if dump is None:
        return
    ttl = int(src.pttl(old))
    dst.restore(new, max(ttl, 0), dump, replace=True)


def _same_server(src: redis.Redis, dst: Any) -> bool:
    if isinstance(dst, RedisCluster):
        return False
    a, b = src.connection_pool.connection_kwargs, dst.connection_pool.connection_kwargs
    return bool(a.get("host") == b.get("host") and a.get("port") == b.get("port") and a.get("db") == b.get("db"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fencex.store.migrate", description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="the old store's Redis (redis://host:port/db)")
    ap.add_argument("--target", required=True, help="the new store's Redis (redis:// or redis+cluster://)")
    ap.add_argument("--prefix", default="fx", help="the key prefix (FENCEX_KEY_PREFIX)")
    ap.add_argument("--topic", default="locations", help="the locations topic (FENCEX_LOCATIONS_TOPIC)")
    ap.add_argument("--groups", type=int, default=DEFAULT_GROUPS, help="FENCEX_STORE_GROUPS of the new store")
    ap.add_argument("--force", action="store_true", help="copy even over a store of the tagged layout")
    args = ap.parse_args(argv)
    try:
        report = migrate(
            redis.Redis.from_url(args.source), connect(args.target), args.prefix, args.topic, args.groups, args.force
        )
    except Misconfigured as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"copied {report.copied} keys; left out: {report.left_out or 'none'}")
    if report.unplaced:
        print(f"{len(report.unplaced)} device states on no partition's list, not copied: {report.unplaced[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
