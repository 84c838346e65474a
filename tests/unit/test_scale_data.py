"""The scale command's data (bench.scaleload): devices on the partitions Kafka would put them on, valid
paddocks that hold their collars, and the sizing rule's arithmetic (bench.scale.sizing)."""

from __future__ import annotations

import shapely
from aiokafka.partitioner import murmur2

from bench.scale import sizing
from bench.scaleload import Country, murmur2_partitions
from fencex.fence import parse_geometry


def test_partitions_are_kafkas_murmur2_for_keys_of_any_length():
    ids = [f"c{i:08d}" for i in range(3000)] + [f"collar-{i}" for i in range(500)] + ["x", "ab", "abc", "é"]
    for partitions in (1, 12, 24, 48):
        want = [(murmur2(i.encode()) & 0x7FFFFFFF) % partitions for i in ids]
        assert murmur2_partitions(ids, partitions).tolist() == want


def test_every_paddock_is_valid_and_holds_its_collars():
    country = Country(farms=30, per_farm=10, devices=3000, seed=3)
    for farm in range(country.farms):
        fences = {f.id: f for f in country.paddocks(farm)}
        assert len(fences) == 10 and {f.tenant for f in fences.values()} == {f"farm-{farm:06d}"}
        for f in fences.values():
            parse_geometry(f.geometry)  # raises if not a valid polygon
        for n in country.collars(farm):
            fid, lon, lat = country.home(farm, n)
            assert fences[fid].shape().contains(shapely.Point(lon, lat))
    assert sum(len(country.collars(f)) for f in range(country.farms)) == 3000


def run_result(per_worker: float, mb_fence: float, mb_device: float) -> dict:
    fences, devices, base = 1000, 10_000, 100.0
    return {
        "fences": fences,
        "devices": devices,
        "empty_worker": {"ready_rss_mb": base},
        "worker": {
            "start": {
                "index_rss_mb": base + fences * mb_fence,
                "ready_rss_mb": base + fences * mb_fence + devices * mb_device,
            }
        },
        "push": {"known": {"fixes_per_s": per_worker}},
        "load": {"redis_per_device_bytes": 500.0, "redis_per_fence_bytes": 1500.0},
    }


def test_sizing_follows_the_rate_and_the_memory():
    r = run_result(per_worker=50_000, mb_fence=0.003, mb_device=0.0005)
    small, big = sizing(r, 10_000), sizing(r, 10_000_000)
    assert (small["worker_pods"], small["partitions"], small["api_pods"]) == (1, 12, 2)
    # 166,667 fixes/s at half of 50,000 a worker: 7 workers; 14 partitions rounded up to 24
    assert (big["worker_pods_by_rate"], big["partitions"]) == (7, 24)
    assert big["redis_state_gb"] == (10_000_000 * 500 + 1_000_000 * 1500) / 1e9
    assert big["redis_gb"] > big["redis_state_gb"]  # tracks
    fat = sizing(run_result(per_worker=50_000, mb_fence=0.003, mb_device=0.01), 10_000_000)  # 10 KB a device
    assert (
        fat["worker_pods_by_memory"] > fat["worker_pods_by_rate"] == 7
        and fat["worker_pods"] == fat["worker_pods_by_memory"]
    )
    none = sizing(run_result(per_worker=50_000, mb_fence=0.01, mb_device=0.0005), 10_000_000)  # 10 GB of fences
    assert none["worker_pods_by_memory"] is None and none["worker_pods"] == 7
