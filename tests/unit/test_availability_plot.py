"""The availability run's picture (bench.availability): events binned a second with their duplicates, and
the figure drawn from a result with and without that series (as bench.evaluate's own run gives it)."""

from __future__ import annotations

from bench.availability import per_second, plot


def test_events_are_counted_a_second_from_the_start_and_a_repeated_id_is_a_duplicate():
    t0 = 1_000_000
    stamps = [
        (t0 + 100, "a"),
        (t0 + 900, "b"),
        (t0 + 2_500, "a"),  # replayed after the kill: the same event_id
        (t0 + 2_600, "c"),
        (t0 - 200, "early"),  # before the producer started: second -1
    ]
    got = per_second(stamps, t0)
    assert got["t"] == [-0.5, 0.5, 1.5, 2.5]
    assert got["events_per_s"] == [1, 2, 0, 2]
    assert got["duplicates_per_s"] == [0, 0, 0, 1]
    assert per_second([], t0) == {"t": [], "events_per_s": [], "duplicates_per_s": []}


AV = {
    "offered_fixes_per_s": 2_000,
    "killed_at_s": 5.0,
    "restarted_at_s": 8.0,
    "recovery_s": 6.5,
    "events_expected": 900,
    "events_lost": 0,
    "events_duplicated": 4,
    "timeline": [{"t": t * 0.5, "fixes_per_s": 2_000.0 if t < 10 else 500.0, "lag": 10.0 * t} for t in range(40)],
}


def test_the_picture_is_drawn_with_and_without_the_events_series(tmp_path):
    assert plot(AV, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    events = per_second([(1_000 * s, f"e{s}") for s in range(20)], 0)
    with_events = plot({**AV, "events_timeline": events}, tmp_path / "b.png")
    assert with_events.read_bytes()[:4] == b"\x89PNG"
    # two panels: taller than the one without events (the PNG's IHDR: width, then height, from byte 16)
    height = int.from_bytes(with_events.read_bytes()[20:24], "big")
    assert height > int.from_bytes((tmp_path / "a.png").read_bytes()[20:24], "big")


def test_a_run_that_never_recovered_still_draws(tmp_path):
    assert plot({**AV, "recovery_s": None, "restarted_at_s": None}, tmp_path / "c.png").exists()
