"""bench.spy's reading of py-spy's collapsed stacks: own time is the innermost frame, a function is
counted once a stack however deep it recurses, lines of one function are one entry."""

from __future__ import annotations

from bench.spy import function, parse, report

STACKS = [
    'process 11:"python -m fencex.worker";run (fencex/stream/loop.py:10);step (fencex/stream/loop.py:40);'
    "detect (/work/fencex/detector.py:77) 6",
    'process 11:"python -m fencex.worker";run (fencex/stream/loop.py:10);step (fencex/stream/loop.py:41);'
    "loads (orjson:0) 3",
    'process 11:"python -m fencex.worker";f (a.py:1);f (a.py:2);f (a.py:3) 1',
    'process 12:"python -m bench.push";main (bench/push.py:5) 2',
    "not a stack line",
]


def test_own_time_is_the_innermost_frame_and_lines_of_a_function_are_one_entry():
    procs = parse(STACKS)
    w = procs["11"]
    assert w.command == "python -m fencex.worker" and w.samples == 10
    assert w.own == {"detect (fencex/detector.py)": 6, "loads (orjson)": 3, "f (a.py)": 1}
    assert w.inclusive["step (fencex/stream/loop.py)"] == 9  # two lines of step: one function
    assert w.inclusive["f (a.py)"] == 1  # recursion counted once a stack


def test_report_keeps_the_matching_processes_with_shares_of_their_own_samples():
    rows = report(parse(STACKS), top=2, match="worker", min_share=0.0)
    assert [r["pid"] for r in rows] == ["11"]
    assert rows[0]["own"] == [("detect (fencex/detector.py)", 0.6), ("loads (orjson)", 0.3)]
    assert ("step (fencex/stream/loop.py)", 0.9) in rows[0]["fencex"][:2]
    assert report(parse(STACKS), top=2, match=None, min_share=0.5)[0]["pid"] == "11"  # push's 2 of 12 left out


def test_function_keeps_a_frame_it_cannot_read():
    assert function("<native>") == "<native>"
