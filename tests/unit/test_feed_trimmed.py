"""When a follower must reload: the change feed's gap rule, one row per case (issue 9 #7)."""

from __future__ import annotations

import pytest

from fencex.store.base import feed_trimmed, feed_unsure, stream_id

CAP = 100


def info6(first: str | None, length: int, last: str = "9-0") -> dict:
    """XINFO STREAM as Redis 6 answers it (no max-deleted-entry-id)."""
    return {
        "length": length,
        "first-entry": (first.encode(), {}) if first else None,
        "last-generated-id": last.encode(),
    }


@pytest.mark.parametrize(
    "after,info,trimmed",
    [
        # Redis 7 says what was deleted last: exact
        ("5-0", {"max-deleted-entry-id": b"4-9", "first-entry": (b"6-0", {})}, False),  # only what we had read
        ("5-0", {"max-deleted-entry-id": b"5-1", "first-entry": (b"6-0", {})}, True),  # one we had not
        ("0-0", {"max-deleted-entry-id": b"0-0", "first-entry": (b"1-0", {})}, False),  # a young feed
        # Redis 6: the first entry left tells
        ("5-0", info6("3-0", 10), False),  # our position is still in the feed
        ("5-0", info6("5-0", 10), False),
        ("5-0", info6("6-0", 10), True),  # trimmed past us (or just to us: a reload too many, never one too few)
        ("0-0", info6("1-0", 3), False),  # loaded from an empty feed that is still short: nothing trimmed
        ("0-0", info6("150-0", CAP), True),  # loaded from an empty feed now at its cap: it was trimmed
        ("5-0", info6(None, 0, last="9-0"), True),  # every entry after us trimmed away
        ("9-0", info6(None, 0, last="9-0"), False),  # emptied, but we had read all
        # the feed is gone: the store was wiped or restarted empty
        ("5-0", None, True),
        ("0-0", None, False),
    ],
)
def test_feed_trimmed(after, info, trimmed):
    assert feed_trimmed(after, info, CAP) is trimmed


@pytest.mark.parametrize(
    "after,info,unsure",
    [
        ("0-0", info6("1-0", 3), True),  # Redis 6, loaded empty, entries now: young, or trimmed by hand?
        ("0-0", info6(None, 0), False),  # still empty
        ("5-0", info6("6-0", 3), False),  # a position in the feed: feed_trimmed tells
        ("0-0", {"max-deleted-entry-id": b"0-0", "first-entry": (b"1-0", {})}, False),  # Redis 7 tells
        ("0-0", None, False),  # no feed
    ],
)
def test_feed_unsure(after, info, unsure):
    """review15d #2: a follower reloads the groups of the trimmed feeds only; those Redis 6 cannot tell
    about go with them (a full reload took them too), and alone are taken as young, as before."""
    assert feed_unsure(after, info) is unsure


def test_stream_ids_compare_as_numbers():
    assert stream_id("10-0") > stream_id("9-5") and stream_id(b"1700000000000-12") == (1700000000000, 12)
