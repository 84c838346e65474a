"""The one retry helper: retries what a wait can cure, never a bug, and can give up."""

from __future__ import annotations

import asyncio

import pytest

from fencex.errors import StoreUnavailable
from fencex.retrying import retrying


def test_retries_unavailable_until_it_answers():
    calls, seen = [], []

    async def main() -> str:
        async for attempt in retrying("test", initial=0.001, max_delay=0.002, on_error=seen.append):
            with attempt:
                calls.append(1)
                if len(calls) < 3:
                    raise StoreUnavailable("down")
                return "ok"
        raise AssertionError("unreachable")

    assert asyncio.run(main()) == "ok"
    assert len(calls) == 3
    assert [type(e) for e in seen] == [StoreUnavailable, StoreUnavailable]


def test_a_bug_is_not_retried():
    calls = []

    async def main() -> None:
        async for attempt in retrying("test", initial=0.001):
            with attempt:
                calls.append(1)
                raise KeyError("a bug")

    with pytest.raises(KeyError):
        asyncio.run(main())
    assert calls == [1]


def test_gives_up_after_its_deadline_with_the_last_error():
    async def main() -> None:
        async for attempt in retrying("test", initial=0.001, max_delay=0.002, give_up_after=0.05):
            with attempt:
                raise StoreUnavailable("still down")

    with pytest.raises(StoreUnavailable, match="still down"):
        asyncio.run(main())
