"""The Redis backend of the store: one :class:`RedisStore`, assembled from its parts.

=========================  ===============================================================
``connection``             the connection (``connect``, ``close``, ``ping``) and ``guard``,
                           which maps redis-py's errors to fencex's
``scripts``                the Lua scripts run in Redis (event history, batch save)
``feed``                   the change feed: written with each change, read by followers
``fences``                 fences: read, create or replace, delete
``herd``                   herd settings, mobs and alert lists, per farm
``devices``                devices: registry, states, positions, memberships and the
                           partitions' generations
``save``                   the worker's batch save, one slot per call
``tenants``                tenants and their API keys (:func:`key_id`, :func:`key_digest`)
``history``                the tenants' event histories and live reads of them
``tracks``                 a device's recent track, read for its farm
``grazing``                the farms' grazing time per day (read; the save writes it)
=========================  ===============================================================

The key layout is in ``fencex.store.base``. No I/O in ``__init__``: ``connect()`` opens the
connection and checks it. Every redis-py connection error leaves here as StoreUnavailable.
"""

from __future__ import annotations

from fencex.store.base import DEFAULT_GROUPS, Keys
from fencex.store.devices import RedisDevices
from fencex.store.fences import RedisFences
from fencex.store.grazing import RedisGrazing
from fencex.store.herd import RedisHerd
from fencex.store.history import RedisHistory
from fencex.store.save import RedisSave
from fencex.store.tenants import RedisTenants, key_digest, key_id
from fencex.store.tracks import RedisTracks

__all__ = ["RedisStore", "key_digest", "key_id"]


class RedisStore(
    RedisFences, RedisHerd, RedisDevices, RedisSave, RedisTenants, RedisHistory, RedisTracks, RedisGrazing
):
    def __init__(
        self, url: str, prefix: str = "fx", history_maxlen: int = 10_000, groups: int = DEFAULT_GROUPS
    ) -> None:
        self.url = url
        self.keys = Keys(prefix, groups)
        self.history_maxlen = history_maxlen
        self.cluster = False  # known from the URL at connect()
        self._redis = None
        self._append_events = None
        self._save_part = None
        self._save_farm = None
        self._save_all = None
