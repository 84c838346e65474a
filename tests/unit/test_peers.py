"""The pure parts of the peers' evaluation (bench.peers, bench.tile38): the workload, the expected
events, the comparison of enter/exit multisets, the ratios to the best peer, redis-benchmark's
output and where the Tile38 binary comes from."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import numpy as np
import pytest

from bench import peers, tile38
from bench.tile38 import Workload
from services.simulator.herd import pastures
from tests.unit.factory import LAT0, LON0, fence

# ------------------------------------------------------------------ workload and expected events


def test_workload_sends_every_collars_fixes_in_time_order_and_shares_them_by_collar():
    fences = pastures(100, 1)
    work = peers.make_workload(fences, 30, 100, seed=3, step_ms=5000, origin_ms=1_000_000)
    assert len(work) == 100
    for d in range(30):  # each collar's fixes strictly newer, one step apart
        ts = work.ts[work.dev == d]
        assert np.all(np.diff(ts) == 5000)
    # the last round is short: collars 0..9 have 4 fixes, the others 3
    assert Counter(work.dev.tolist())[0] == 4 and Counter(work.dev.tolist())[29] == 3
    shares = [set(work.dev[work.share(i, 4)].tolist()) for i in range(4)]
    assert set().union(*shares) == set(range(30))
    assert all(a.isdisjoint(b) for i, a in enumerate(shares) for b in shares[i + 1 :])  # a collar in one client
    again = peers.make_workload(fences, 30, 100, seed=3, step_ms=5000, origin_ms=1_000_000)
    assert np.array_equal(again.lon, work.lon) and np.array_equal(again.lat, work.lat)  # seeded


def _walk(points: list[tuple[float, float]], device: str = "cow-1") -> Workload:
    n = len(points)
    return Workload(
        [device],
        ["farm"],
        np.zeros(n, dtype=np.int64),
        np.arange(1, n + 1, dtype=np.int64) * 10_000,
        np.array([p[0] for p in points]),
        np.array([p[1] for p in points]),
    )


IN = (LON0 + 0.0005, LAT0 + 0.005)  # 56 m apart, 10 s apart: a walk, not a jump
OUT = (LON0 - 0.0005, LAT0 + 0.005)
FAR = (LON0 - 0.01, LAT0 - 0.01)  # 1.3 km from IN: faster than the herd rules' 20 m/s in 10 s


def test_expected_events_give_enter_for_a_first_fix_inside_as_tile38_does():
    # Tile38 1.26.1 gives enter for a new object's first point inside a fence: so must the expectation
    got = peers.expected_events(_walk([IN]), [fence("north", dwell_s=None)])
    assert got == Counter({("enter", "cow-1", "north", 10_000): 1})


def test_expected_events_are_enters_and_exits_only_with_the_fix_time():
    fences = [fence("north", dwell_s=15)]  # a dwell at 20 s inside: fencex's own, not compared
    got = peers.expected_events(_walk([OUT, IN, IN, IN, OUT]), fences)
    assert got == Counter({("enter", "cow-1", "north", 20_000): 1, ("exit", "cow-1", "north", 50_000): 1})


def test_a_jump_is_a_rule_tile38_lacks_so_the_workload_has_none():
    # fencex holds a jump back until a second fix agrees; Tile38 would enter at 20 s and exit at 40 s.
    # The evaluation's workload moves at a cow's pace (fixes 5 s apart), where no step is a jump.
    got = peers.expected_events(_walk([FAR, IN, IN, FAR]), [fence("north", dwell_s=None)])
    assert got == Counter({("enter", "cow-1", "north", 30_000): 1})


# ------------------------------------------------------------------ comparing events

E1 = ("enter", "cow-1", "north", 20_000)
X1 = ("exit", "cow-1", "north", 50_000)
E2 = ("enter", "cow-2", "north", 20_000)


@pytest.mark.parametrize(
    ("got", "agree", "missing", "extra"),
    [
        ([E1, X1, E2], True, 0, 0),  # the same multiset, in any order
        ([E2, X1, E1], True, 0, 0),
        ([E1, E2], False, 1, 0),  # an exit missing
        ([E1, X1, E2, E2], False, 0, 1),  # a duplicate is an extra event
        ([E1, X1, ("enter", "cow-2", "north", 25_000)], False, 1, 1),  # same counts, another fix: differs
        ([E1, X1, E2, ("dwell", "cow-1", "north", 30_000)], True, 0, 0),  # not compared
    ],
)
def test_compare_is_a_multiset_equality_of_enters_and_exits(got, agree, missing, extra):
    c = peers.compare(Counter([E1, X1, E2]), got)
    assert (c["agree"], c["missing"], c["extra"]) == (agree, missing, extra)
    assert c["expected"] == {"enter": 2, "exit": 1}


def test_a_run_whose_events_differ_fails_the_evaluation():
    ok = peers.compare(Counter([E1]), [E1])
    bad = peers.compare(Counter([E1]), [])
    assert peers.failures({"push_peers": {"checks": {"fencex, 1 worker(s)": ok, "Tile38, 4 client(s)": bad}}}) == [
        "Tile38, 4 client(s)"
    ]
    assert peers.failures({}) == []


# ------------------------------------------------------------------ ratios


def test_best_peer_is_the_highest_measured_one():
    assert peers.best({"a": 10.0, "b": 30.0, "c": None, "d": 0.0}) == ("b", 30.0)
    assert peers.best({"a": None, "b": math.nan}) is None


def test_ratio_row_divides_by_the_best_peer_and_judges_the_target():
    row = peers.ratio_row("push", ("fencex", 120_000.0), {"one": 60_000.0, "four": 90_000.0}, "fixes/s", 1.6)
    assert row["peer"] == "four" and row["ratio"] == pytest.approx(120_000 / 90_000)
    assert row["met"] is False
    assert peers.ratio_row("push", ("fencex", 150_000.0), {"four": 90_000.0}, "fixes/s", 1.6)["met"] is True
    none = peers.ratio_row("push", ("fencex", 1.0), {"x": None}, "fixes/s", 1.6)
    assert none["ratio"] is None and none["met"] is None


def test_ratio_rows_pair_each_fencex_figure_with_the_best_peer_of_its_client_class():
    results = {
        "push_peers": {"fencex": [{"workers": 1, "fixes_per_s": 100_000.0}, {"workers": 2, "fixes_per_s": 180_000.0}]},
        "tile38": {
            "push": [
                {"clients": 1, "batch": 1000, "fixes_per_s": 50_000.0},
                {"clients": 4, "batch": 1000, "fixes_per_s": 80_000.0},
            ],
            "pull_python": [{"clients": 4, "requests_per_s": 20_000.0}],
            "pull_c": [{"connections": 32, "requests_per_s": 60_000.0, "p99_ms": 2.0}],
            "pull_pipelined": [{"clients": 4, "batch": 1000, "points_per_s": 100_000.0}],
        },
        "postgis": {"point_per_s_4_clients": 25_000.0, "batch_points_per_s": 40_000.0},
        "pull": {
            "python": [{"clients": 4, "requests_per_s": 10_000.0}],
            "point": [{"connections": 128, "requests_per_s": 45_000.0, "p99_ms": 8.0}],
            "batch": {"points": 100_000, "points_per_s": 900_000.0},
        },
    }
    rows = {r["measure"]: r for r in peers.ratio_rows(results)}
    one = rows["push, one fix a record, 1 worker(s)"]
    assert one["ratio"] == pytest.approx(100_000 / 80_000) and one["peer"].startswith("Tile38, 4 ")
    assert one["target"] == 1.6
    assert rows["push, one fix a record, 2 worker(s)"]["target"] == 2.5
    py = rows["pull, one point a request, 4 Python client(s)"]
    assert py["peer"].startswith("PostGIS") and py["ratio"] == pytest.approx(10_000 / 25_000)  # the best peer
    c = rows["pull, one point a request, C client, best connection count"]
    assert "wrk" in c["fencex"] and "redis-benchmark" in c["peer"] and c["ratio"] == pytest.approx(0.75)
    assert rows["pull, batched points"]["ratio"] == pytest.approx(9.0)
    # the C client's target also wants p99 under 10 ms: fencex's best run within it is the one compared
    results["pull"]["point"] = [
        {"connections": 128, "requests_per_s": 70_000.0, "p99_ms": 12.0},
        {"connections": 64, "requests_per_s": 66_000.0, "p99_ms": 9.0},
    ]
    c = {r["measure"]: r for r in peers.ratio_rows(results)}[
        "pull, one point a request, C client, best connection count"
    ]
    assert c["fencex_value"] == 66_000.0 and c["met"] is True
    results["pull"]["point"] = [{"connections": 128, "requests_per_s": 70_000.0, "p99_ms": 12.0}]
    c = {r["measure"]: r for r in peers.ratio_rows(results)}[
        "pull, one point a request, C client, best connection count"
    ]
    assert c["ratio"] > 1 and c["met"] is False
    table = "\n".join(peers.ratios_table(list(rows.values())))
    assert "**1.25x**" in table and ">= 1.6x (not met)" in table and ">= 1x, p99 < 10 ms (not met)" in table


# ------------------------------------------------------------------ redis-benchmark and the binary


def test_redis_benchmark_csv_is_read_from_the_right_as_the_test_name_holds_commas_and_quotes():
    text = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
        '"max_latency_ms"\n'
        '"INTERSECTS fences IDS OBJECT {"type":"Point","coordinates":[17.30__rand_int__,59.60__rand_int__]}",'
        '"36900.37","0.660","0.016","0.551","1.263","3.231","12.167"\n'
    )
    assert tile38.parse_csv(text) == {"requests_per_s": 36900.37, "p50_ms": 0.551, "p99_ms": 3.231}


def test_the_binary_comes_from_the_flag_then_the_environment_then_the_shared_folder(tmp_path, monkeypatch):
    exe = tmp_path / "tile38-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(tile38, "DEFAULT", tmp_path / "absent")
    monkeypatch.delenv(tile38.ENV, raising=False)
    path, why = tile38.find()
    assert path is None and "no Tile38 binary" in why
    monkeypatch.setenv(tile38.ENV, str(exe))
    assert tile38.find() == (exe, f"{exe} (${tile38.ENV})")
    plain = tmp_path / "plain"
    plain.write_text("")
    path, why = tile38.find(str(plain))  # a flag naming something unusable is said so, not skipped silently
    assert path is None and "--tile38" in why and "not an executable" in why


# ------------------------------------------------------------------ the README from the JSON


def test_the_readme_figures_are_written_between_the_markers_from_the_results(tmp_path):
    from bench import evaluate

    results = {
        "date": "2026-11-21T18:00:00+00:00",
        "machine": "vm x86_64, 2 cores",
        "fences": 10_000,
        "with_peers": True,
        "tile38": {"skipped": "no Tile38 binary: none at X"},
        "push_peers": {},
        "postgis": {"point_per_s_1_clients": 5_000.0, "point_per_s_4_clients": 20_000.0, "batch_points_per_s": 1.0},
        "pull": {"python": [{"clients": 4, "requests_per_s": 10_000.0, "p50_ms": 0.3, "p99_ms": 2.0}], "point": []},
    }
    results["ratios"] = peers.ratio_rows(results)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "ratios.png").write_bytes(b"\x89PNG fake")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{evaluate.BEGIN}\nold figures\n{evaluate.END}\nafter\n")
    evaluate.update_readme(results, out, readme)
    text = readme.read_text()
    assert (
        "old figures" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{evaluate.END}\nafter\n")
    )
    assert "2026-11-21T18:00:00+00:00" in text and "**0.50x**" in text  # 10,000 / PostGIS's 20,000
    assert "no Tile38 binary" in text and "](docs/figures/ratios.png)" in text
    assert (tmp_path / "docs" / "figures" / "ratios.png").read_bytes() == b"\x89PNG fake"
    again = readme.read_text()
    evaluate.update_readme(results, out, readme)
    assert readme.read_text() == again  # idempotent
    (out / "ratios.png").write_bytes(b"\x89PNG tiny")
    evaluate.update_readme({**results, "tiny": True}, out, readme)  # a tiny run's picture stays out
    assert (tmp_path / "docs" / "figures" / "ratios.png").read_bytes() == b"\x89PNG fake"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        evaluate.update_readme(results, out, readme)


def test_a_run_of_some_parts_only_writes_what_it_has(tmp_path):
    from bench import evaluate

    results = {
        "date": "2026-11-21T18:00:00+00:00",
        "machine": "vm",
        "fences": 500,
        "devices": 1000,
        "with_peers": True,
        "durations_s": {"push_peers": 40.0},
        "tile38": {"push": [{"clients": 4, "batch": 1000, "fixes_per_s": 50_000.0, "send_seconds": 1, "seconds": 1}]},
        "push_peers": {
            "fixes": 1000,
            "devices": 10,
            "step_s": 5.0,
            "expected": {"enter": 1, "exit": 0},
            "checks": {"Tile38, 4 client(s)": peers.compare(Counter([E1]), [E1])},
            "fencex": [{"workers": 1, "fixes_per_s": 100_000.0}],
        },
    }
    paths = evaluate.write(results, tmp_path)
    assert tmp_path / "ratios.png" in paths and (tmp_path / "report.md") in paths
    assert not (tmp_path / "push_sweep.png").exists()  # the thesis's figures need their parts
    report = (tmp_path / "report.md").read_text()
    assert "**2.00x**" in report and "| Tile38, 4 client(s) | 1 | 0 | 0 | 0 | yes |" in report


def test_a_disagreement_is_the_evaluations_exit_status_not_a_footnote(tmp_path, monkeypatch):
    from bench import evaluate

    results = {
        "date": "2026-11-21T18:00:00+00:00",
        "machine": "vm",
        "fences": 500,
        "devices": 1000,
        "with_peers": True,
        "push_peers": {
            "fixes": 1000,
            "devices": 10,
            "step_s": 5.0,
            "expected": {"enter": 1, "exit": 1},
            "checks": {"Tile38, 4 client(s)": peers.compare(Counter([E1, X1]), [E1, X1])},
            "fencex": [],
        },
    }
    good = tmp_path / "good.json"
    good.write_bytes(json.dumps(results).encode())
    monkeypatch.setattr(sys, "argv", ["evaluate", "--from-json", str(good), "--out", str(tmp_path / "a")])
    assert evaluate.main() == 0
    results["push_peers"]["checks"]["fencex, 1 worker(s)"] = peers.compare(Counter([E1, X1]), [E1])
    bad = tmp_path / "bad.json"
    bad.write_bytes(json.dumps(results).encode())
    monkeypatch.setattr(sys, "argv", ["evaluate", "--from-json", str(bad), "--out", str(tmp_path / "b")])
    assert evaluate.main() == 1
    assert "| fencex, 1 worker(s) | 1 | 0 | 1 | 0 | **NO** |" in (tmp_path / "b" / "report.md").read_text()


def _fails() -> None:
    raise SystemExit(3)


def test_a_client_process_that_dies_stops_the_wait_at_once():
    import multiprocessing as mp
    import time

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fails)
    p.start()
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="exit code 3"):
        tile38._gather(q, [p], timeout=60)
    assert time.monotonic() - t < 10
    p.join()
