"""The elasticity experiment's accounting (bench/elastic.py): the drain time and the events lost and
duplicated through each scaling action, from made-up timelines and events."""

from __future__ import annotations

from bench import elastic, keda

RULES = keda.Rules(1, 12, 15, 50_000, 12)
WALL0 = 1_000_000.0  # the timeline's start, wall clock (s)
CFG = {"warm_s": 10.0, "high_s": 20.0, "low_rate": 10_000.0, "pack": 1, "out": "x"}


def row(t: float, backlog: int, workers: int = 1, replicas: int = 1) -> dict:
    return {
        "t": t,
        "backlog": backlog,
        "workers": workers,
        "replicas": replicas,
        "pending": replicas - workers,
        "fixes_per_s": 1.0,
        "produced_per_s": 1.0,
        "phase": "high" if 10 <= t < 30 else "low",
    }


def ms(t: float) -> int:
    return int((WALL0 + t) * 1000)


def result(rows: list[dict], actions: list[dict], expected: dict[str, int], got: list[tuple[str, int]]) -> dict:
    return elastic._result(CFG, RULES, RULES.scaled(10), rows, actions, expected, got, 100, WALL0, 0, 2)


def test_drained_is_the_first_second_under_the_threshold_once_the_load_is_down() -> None:
    rows = [row(5, 0), row(15, 300_000), row(29, 5_000), row(31, 200_000), row(40, 9_000), row(41, 50_000)]
    # under 10,000 at 29 s does not count (the load is still up); 40 s does, whatever came after
    assert elastic._drain(rows, 30, 10_000) == 40
    assert elastic._drain(rows[:4], 30, 10_000) is None  # never drained


def test_segments_run_from_each_action_to_the_next() -> None:
    actions = [{"t": 12.0}, {"t": 50.0}]
    assert [(a, b) for a, b, _ in elastic._segments(actions, 99.0)] == [(0.0, 12.0), (12.0, 50.0), (50.0, 99.0)]
    assert [(a, b) for a, b, _ in elastic._segments([], 99.0)] == [(0.0, 99.0)]


def test_lost_events_count_where_their_fix_was_made_duplicates_where_published() -> None:
    actions = [{"t": 12.0, "from": 1, "to": 2, "lag": 60_000}, {"t": 50.0, "from": 2, "to": 1, "lag": 0}]
    expected = {"a": ms(5), "b": ms(20), "c": ms(30), "d": ms(60)}
    got = [
        ("a", ms(6)),
        ("b", ms(21)),
        ("b", ms(52)),  # b again, published after the scale-down
        ("d", ms(61)),
        # c never came
    ]
    rows = [row(t, 0) for t in range(1, 70)]
    r = result(rows, actions, expected, got)
    assert (r["events_expected"], r["events_received"], r["events_lost"], r["events_duplicated"]) == (4, 4, 1, 1)
    assert not r["ok"]
    seg = [(s["events_expected"], s["events_lost"], s["events_duplicated"]) for s in r["segments"]]
    assert seg == [(1, 0, 0), (2, 1, 0), (1, 0, 1)]
    assert r["segments"][-1]["to_s"] is None  # the last runs to the end


def test_a_run_with_every_event_once_is_ok() -> None:
    expected = {"a": ms(5), "b": ms(20)}
    r = result([row(1, 0), row(40, 0)], [], expected, [("a", ms(6)), ("b", ms(21))])
    assert r["ok"] and r["events_lost"] == 0 and r["events_duplicated"] == 0 and r["unexpected_events"] == 0
    assert r["time_scale"] == 10 and r["rules_used"]["polling_s"] == 1.5 and r["rules_as_configured"]["polling_s"] == 15
