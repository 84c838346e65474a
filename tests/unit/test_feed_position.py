"""A follower's position on a feed emptied by hand (review15c): Redis 7's XINFO STREAM of an emptied feed names the
last id it deleted. A follower at "0-0" there (what its position was when taken from the feed's last entry) is
told the feed was trimmed past it (a reload, on every step); at the feed's last generated id it is not."""

from __future__ import annotations

from fencex.store.base import feed_trimmed

EMPTIED_ON_REDIS_7 = {
    "length": 0,
    "first-entry": None,
    "last-entry": None,
    "last-generated-id": b"1790000000000-0",
    "max-deleted-entry-id": b"1790000000000-0",
}


def test_a_follower_at_the_emptied_feeds_last_generated_id_is_not_behind():
    assert feed_trimmed("1790000000000-0", EMPTIED_ON_REDIS_7, 100_000) is False


def test_a_follower_at_0_0_on_an_emptied_feed_is_behind():  # why the position must not be "0-0" there
    assert feed_trimmed("0-0", EMPTIED_ON_REDIS_7, 100_000) is True
