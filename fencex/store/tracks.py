"""Tracks in Redis, the read side: a device's recent track (:mod:`fencex.track`) for its farm.

The worker writes ``{P}:{p}:track:{id}`` in the same atomic save as the device's state (appends on the
live path, a rewrite after a late merge, a trim or a transfer); the API reads both here in one
MULTI/EXEC, so the track it serves is the one of the state it checked the farm of: a collar moved
to another farm between the two reads cannot show its new farm's fixes to its old one. Both keys
are the device's partition's (``{p<n>}``: one slot), found from the device's ``where``.
"""

from __future__ import annotations

from typing import cast

import orjson
from redis.exceptions import ResponseError

from fencex.detector import DeviceState
from fencex.errors import CorruptRecord, NotFound
from fencex.store.connection import RedisConnection, guard
from fencex.track import Track


class RedisTracks(RedisConnection):
    """A device's track, read for the farm that owns the device."""

    @guard
    async def device_track(self, tenant: str, device_id: str) -> Track:
        """The device's track: empty when none is kept (a device seen before tracks were, or whose
        track was lost). NotFound unless the device's state is ``tenant``'s (no fix yet, or another
        farm's: the same answer, so ids of other farms cannot be probed); CorruptRecord when the
        stored track does not read (its message names the device)."""
        where = cast(bytes | None, await self.redis.hget(self.keys.where(self.keys.group(device_id)), device_id))
        if where is None:
            raise NotFound(f"no device {device_id!r}")
        p = int(where)
        async with self.redis.pipeline(transaction=True) as pipe:  # one slot: the device's partition
            pipe.get(self.keys.device(p, device_id))
            pipe.lrange(self.keys.track(p, device_id), 0, -1)  # a list of segments, read as one
            raw_state, segments = cast(
                tuple[bytes | None, list[bytes] | ResponseError], await pipe.execute(raise_on_error=False)
            )
        if raw_state is None or DeviceState.from_obj(orjson.loads(raw_state)).tenant != tenant:
            raise NotFound(f"no device {device_id!r}")
        if isinstance(segments, ResponseError):  # a key of another type (set by hand): not a track
            raise CorruptRecord(f"the stored track of device {device_id!r} does not read: {segments}"[:300])
        if not segments:
            return Track()
        try:
            return Track.from_bytes(b"".join(segments))
        except CorruptRecord as exc:
            raise CorruptRecord(f"the stored track of device {device_id!r} does not read: {exc}") from None
