"""The yearly budget's arithmetic (bench.budget): each row from given inputs, worked by hand here, and the
measuring helpers that need no servers (the process sampler, the Redis key classes, deploy/'s retention)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from bench.budget import (
    GB,
    HOURS_A_YEAR,
    Assumptions,
    Install,
    Prices,
    Sampler,
    Scenario,
    budget,
    classify,
    deploy_kafka,
    markdown,
    per_million,
    row,
)

# A measurement as bench.budget writes one, with round numbers to work by hand.
M = {
    "date": "2026-11-21T00:00:00+00:00",
    "machine": "test",
    "fixes": 1_000_000,
    "fixes_per_record": 1,
    "fences": 1_000,
    "cpu_s_per_million_fixes": {"worker": 10.0, "broker": 2.0, "redis": 4.0, "api": 0.0},
    "worker_mb": {"base": 100.0, "per_fence": 0.01, "per_device": 0.001},
    "redis": {
        "bytes": {"service": 0},
        "bytes_per_device": 200.0,
        "bytes_per_track_fix": 20.0,
        "bytes_per_fence": 1_000.0,
        "bytes_per_tenant": 0.0,
        "bytes_per_history_event": 0.0,
    },
    "kafka_locations": {"stored_bytes_single": 150.0},
    "kafka_events": {"stored_bytes_single": 300.0},
    "events_per_million_fixes": 10_000.0,
}
# no API load, so that every core comes from the measured CPU-seconds
A = Assumptions(api_requests_per_farm_s=0.0)
P = Prices(vcpu_hour=0.03, gb_hour=0.004, disk_gb_month=0.1)
INSTALL = Install()
NATION = Scenario("nation", 1_000_000, 60.0, 10_000, 100)  # 16,667 fixes/s


def test_a_rows_cores_are_the_fix_rate_times_the_measured_cpu_seconds_times_the_peak_factor():
    r = row(M, NATION, A, P, INSTALL)
    rate = 1_000_000 / 60
    assert r.fixes_per_s == pytest.approx(rate)
    assert r.cores_need["worker"] == pytest.approx(rate * 10.0 / 1e6 * 2.0)  # 0.333
    assert r.cores_need["broker"] == pytest.approx(rate * 2.0 / 1e6 * 2.0)
    assert r.cores_need["redis"] == pytest.approx(rate * 4.0 / 1e6 * 2.0)
    assert r.cores_need["api"] == 0.0


def test_doubling_the_fix_rate_doubles_the_cores_and_the_kafka_log():
    once = row(M, NATION, A, P, INSTALL)
    twice = row(M, replace(NATION, fix_interval_s=30.0), A, P, INSTALL)
    for part in ("worker", "broker", "redis"):
        assert twice.cores_need[part] == pytest.approx(2 * once.cores_need[part])
    assert twice.kafka_gb["locations"] == pytest.approx(2 * once.kafka_gb["locations"])


def test_the_peak_factor_scales_the_cores():
    assert row(M, NATION, replace(A, peak=3.0), P, INSTALL).cores_need["worker"] == pytest.approx(
        1.5 * row(M, NATION, A, P, INSTALL).cores_need["worker"]
    )


def test_kafka_storage_is_rate_times_record_bytes_times_retention_times_replicas():
    r = row(M, NATION, A, P, INSTALL)
    rate = 1_000_000 / 60
    assert r.kafka_gb["locations"] == pytest.approx(rate * 150.0 * 1 * 86_400 * 3 / GB)
    # events: 1 % of the fixes make one, kept 7 days
    assert r.kafka_gb["fence-events"] == pytest.approx(rate * 0.01 * 300.0 * 7 * 86_400 * 3 / GB)
    longer = row(M, NATION, replace(A, locations_retention_days=7.0), P, INSTALL)
    assert longer.kafka_gb["locations"] == pytest.approx(7 * r.kafka_gb["locations"])


def test_redis_data_is_devices_with_their_tracks_plus_fences():
    r = row(M, NATION, A, P, INSTALL)
    track = min(2_000, 86_400 / 60)  # a day of fixes a minute: 1,440, under the cap
    assert r.redis_data_gb == pytest.approx((1_000_000 * (200.0 + track * 20.0) + 10_000 * 1_000.0) / GB)
    # a fix a second would keep 86,400 a day: the cap of 2,000 holds
    fast = row(M, replace(NATION, fix_interval_s=1.0), A, P, INSTALL)
    assert fast.redis_data_gb == pytest.approx((1_000_000 * (200.0 + 2_000 * 20.0) + 10_000 * 1_000.0) / GB)


def test_the_needed_cost_is_cores_and_memory_by_the_hour_and_disk_by_the_month():
    r = row(M, NATION, A, P, INSTALL)
    cores = sum(r.cores_need.values())
    memory = sum(r.memory_gb_need.values())
    disk = sum(r.kafka_gb.values()) / A.disk_fill
    assert r.yearly_need == pytest.approx((cores * 0.03 + memory * 0.004) * HOURS_A_YEAR + disk * 0.1 * 12)
    doubled = row(M, NATION, A, Prices(0.06, 0.008, 0.2), INSTALL)
    assert doubled.yearly_need == pytest.approx(2 * r.yearly_need)
    assert doubled.yearly == pytest.approx(2 * r.yearly)


def test_a_small_farm_is_provisioned_the_minimum_install_with_one_spare():
    farm = Scenario("farm", 1_500, 600.0, 100, 1)
    r = row(M, farm, A, P, INSTALL)
    assert r.workers == INSTALL.min_workers + 1  # N+1
    assert r.api_pods == INSTALL.min_api
    redis_cores = INSTALL.redis_cpu * 2  # and a replica
    assert r.cores == pytest.approx(
        2 * INSTALL.worker_cpu + 3 * INSTALL.api_cpu + redis_cores + INSTALL.kafka_nodes * INSTALL.kafka_cpu
    )
    assert r.disk_gb == INSTALL.kafka_nodes * INSTALL.kafka_disk_gb
    assert r.yearly > 100 * r.yearly_need  # the minimum install dwarfs what 1,500 collars use
    alone = row(M, farm, replace(A, n_plus_one=False), P, INSTALL)
    assert alone.workers == INSTALL.min_workers


def test_a_large_service_gets_whole_worker_pods_for_its_cores_plus_one():
    big = Scenario("big", 30_000_000, 10.0, 10_000, 100)  # 3,000,000 fixes/s: 60 worker cores at 2x
    r = row(M, big, A, P, INSTALL)
    assert r.workers == math.ceil(r.cores_need["worker"] / INSTALL.worker_cpu) + 1


def test_the_budget_gives_each_scenario_its_share_of_the_largest():
    b = budget(M, [Scenario("farm", 1_500, 600.0, 100, 1), NATION], A, P, INSTALL)
    farm, nation = b["rows"]
    assert b["largest"] == "nation"
    assert nation["yearly_as_share"] == pytest.approx(nation["yearly"])
    assert farm["yearly_as_share"] == pytest.approx(1_500 * nation["yearly"] / 1_000_000)


def test_the_markdown_table_has_a_row_a_scenario_and_states_its_prices_and_assumptions():
    b = budget(M, [Scenario("farm", 1_500, 600.0, 100, 1), NATION], A, P, INSTALL)
    text = markdown(b)
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 3  # the header and two rows
    assert "| farm |" in text and "| nation |" in text
    assert "$0.03 a vCPU-hour" in text and P.source in text
    assert "N+1" in text and "3 replicas" in text


def test_the_defaults_read_the_retention_and_replicas_deploy_configures():
    k = deploy_kafka()
    assert k["locations_retention_days"] == 1.0  # deploy/k8s/base/kafka.yaml: 86400000 ms
    assert k["fence-events_retention_days"] == 7.0
    assert k["replication"] == 3.0  # the prod overlay


def test_redis_keys_are_classed_by_what_they_belong_to():
    pats = re.compile(r"collar-\d+"), re.compile(r"pasture-\d+"), re.compile(r"farm-\d+")
    rows = [
        ("fx:{p3}:dev:collar-000001", "device"),
        ("fx:{p3}:track:collar-000001", "track"),
        ("fx:{g1}:fence:pasture-000002", "fence"),
        ("fx:{g1}:in:farm-001:pasture-000002", "fence"),  # a fence's occupants
        ("fx:{g1}:events:farm-001", "history"),
        ("fx:{g1}:geo:farm-001", "tenant"),
        ("fx:{g1}:changes", "service"),
    ]
    for key, want in rows:
        assert classify(key, *pats) == want, key


BUSY = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
t = time.process_time()
while time.process_time() - t < 0.6:
    pass
print("done", flush=True)
time.sleep(60)
"""


def busy() -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def go(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("\n")
    p.stdin.flush()


def done(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None and p.stdout.readline() == "done\n"


def test_the_sampler_counts_a_busy_process_cpu_and_one_started_during_the_section():
    first = busy()
    procs: dict[str, list[int]] = {"worker": [first.pid], "broker": []}
    late = None
    try:
        sampler = Sampler(lambda: procs, interval=0.1).start()
        late = busy()  # started inside the section: all its CPU counts, its start-up included
        procs["broker"] = [late.pid]
        go(first)
        go(late)
        done(first)
        done(late)
        use = sampler.stop()
    finally:
        for p in (first, late):
            if p is not None:
                p.kill()
                p.communicate()  # and its pipes closed
    assert 0.55 <= use["classes"]["worker"]["cpu_s"] < 1.5
    assert use["classes"]["broker"]["cpu_s"] >= 0.6
    assert use["classes"]["worker"]["rss_peak_mb"] > 1
    assert use["classes"]["worker"]["processes"] == 1
    assert per_million(use, 2_000_000)["worker"] == pytest.approx(use["classes"]["worker"]["cpu_s"] / 2)
