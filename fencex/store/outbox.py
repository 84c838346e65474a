"""The cluster save's outbox: the farm steps a save still owes, filed with its partition steps.

On a Redis Cluster a worker's save goes in steps (:mod:`fencex.store.save`): ``SAVE_PART`` per
partition, then, once all of them are done, ``SAVE_FARM`` per farm group. A worker that died between
the two left states saved whose farm writes (positions, memberships, alert lists, grazing) were never
written, and the next owner's replay found those fixes stale. So each partition step files, in its
own slot and in the same atomic call, an entry under the save's token in the partition's outbox
(``{P}:{p}:outbox``, a hash): the first partition's entry holds the farm steps (their token keys and
blobs), the others' name the first's outbox. The saver deletes the entries once every farm step has
succeeded. A worker claiming partitions first replays what their outboxes hold
(:meth:`RedisOutbox.replay_outboxes`, from ``claim_partitions``, before it loads a state):

- only a save whose partition steps all ran (each one's token is there): a save cut before some of
  them is one whose farm steps never ran and never will, as a save fenced half-way (its missing
  partitions' fixes are replayed by their new owners, who write their farm rows themselves);
- its farm steps are sent again as they were: ``SAVE_FARM`` writes nothing twice (its token per
  group), so a step that did run before the saver died is not doubled;
- an entry older than :data:`HORIZON_S` is dropped without a replay: the farm steps' tokens live
  3,600 s, and a replay after they expired could write a step twice.

On one Redis the save is one script call (``SAVE_ALL``): nothing to owe, no outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack
from redis.exceptions import RedisError

from fencex.store.base import Keys, step_keys, tag_of
from fencex.store.connection import RedisConnection, guard

log = logging.getLogger("fencex.store")

HORIZON_S = 3000.0  # an entry older than this is not replayed: the steps' tokens expire after 3,600 s


@dataclass(frozen=True, slots=True)
class Filed:
    """A partition step's outbox entry: the hash it goes to, under which field (the save's token), what."""

    key: str
    token: str
    entry: bytes


def file_entries(
    keys: Keys, part_calls: Sequence[tuple[str, bytes]], farm_calls: Sequence[tuple[str, bytes]], now: float
) -> dict[str, Filed]:
    """The outbox entries of a save's partition steps, by their token keys (none when the save has no farm
    step, or no partition step to come before it). Entry: ``[filed at (s), [every partition step's token
    key], the farm calls [[token key, blob], ...]`` for the first, or the first's outbox key for the rest."""
    if not part_calls or not farm_calls:
        return {}
    tokens = [t for t, _ in part_calls]
    token = tokens[0].rsplit(":", 1)[1]
    holder = keys.outbox(tag_of(tokens[0]))
    full = cast(bytes, msgpack.packb([now, tokens, [[t, b] for t, b in farm_calls]]))
    pointer = cast(bytes, msgpack.packb([now, tokens, holder]))
    return {t: Filed(keys.outbox(tag_of(t)), token, full if i == 0 else pointer) for i, t in enumerate(tokens)}


class RedisOutbox(RedisConnection):
    """Filing is ``SAVE_PART``'s (its second key); clearing and replaying are here."""

    async def clear_filed(self, filed: Mapping[str, Filed], best_effort: bool = False) -> None:
        """Delete a save's outbox entries (its farm steps are done, or will never be owed)."""
        if not filed:
            return
        with contextlib.suppress(RedisError) if best_effort else contextlib.nullcontext():
            async with self.redis.pipeline(transaction=False) as pipe:
                for f in filed.values():
                    pipe.hdel(f.key, f.token)
                await pipe.execute()

    async def owed_by_no_one(self, filed: Mapping[str, Filed]) -> Mapping[str, Filed]:
        """``filed`` if some partition step of its save has not run (no claim will replay it), else nothing."""
        if not filed or all(await self._exist(list(filed))):
            return {}
        return filed

    @guard
    async def replay_outboxes(self, partitions: Sequence[int]) -> int:
        """Send again the farm steps the partitions' outboxes hold (see the module's docstring); the number
        of saves replayed. A no-op on one Redis."""
        if not self.cluster or not partitions:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hgetall(self.keys.outbox(Keys.part(p)))
            got = cast(list[dict[bytes, bytes]], await pipe.execute())
        pending: dict[str, list[Any]] = {}  # token -> its entries found here
        for raw in got:
            for field, entry in raw.items():
                pending.setdefault(field.decode(), []).append(msgpack.unpackb(entry))
        replayed, now = 0, time.time()
        for token, entries in pending.items():
            filed_at, tokens = entries[0][0], entries[0][1]
            everywhere = {t: Filed(self.keys.outbox(tag_of(t)), token, b"") for t in tokens}
            if now - filed_at > HORIZON_S:
                log.warning("a save's farm steps were owed for %.0f s: dropped, not replayed", now - filed_at)
                await self.clear_filed(everywhere)
                continue
            if not all(await self._exist(tokens)):
                continue  # cut before some of its partition steps: its farm steps are owed by no one
            calls = next((e[2] for e in entries if not isinstance(e[2], str)), None)
            if calls is None:  # the first partition's entry holds them
                raw_entry = cast(bytes | None, await self.redis.hget(entries[0][2], token))
                if raw_entry is None:  # deleted: the farm steps were done (or the entry had expired)
                    await self.clear_filed(everywhere)
                    continue
                calls = msgpack.unpackb(raw_entry)[2]
            await asyncio.gather(*(self._save_farm(keys=step_keys(t), args=[blob]) for t, blob in calls))
            await self.clear_filed(everywhere)
            replayed += 1
        if replayed:
            log.warning("replayed the farm steps of %d saves a worker did not finish", replayed)
        return replayed

    async def _exist(self, keys: Sequence[str]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in await pipe.execute()]
