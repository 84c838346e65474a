"""fencex's own exception types.

Adapters catch their library's errors at the edge and raise one of these
(``raise StoreUnavailable(...) from exc``), so callers never depend on
redis-py, aiokafka or confluent-kafka exception classes::

    FencexError
    ├── InvalidInput                 bad data from a user or a device
    │   ├── InvalidFence             geometry or properties a fence cannot have
    │   ├── InvalidFix               a GPS fix that cannot be processed
    │   └── LimitExceeded            over a size limit or a quota (names which: HTTP 413 or 422)
    ├── NotFound                     no such fence, device or tenant
    ├── IdTaken                      the id belongs to someone else (HTTP 409)
    ├── InAnotherMob                 a device is in another mob of its farm already (HTTP 409)
    ├── VersionConflict              If-Match no longer matches (HTTP 412)
    ├── Fenced                       a state save refused: its partitions have a newer owner
    │   └── GenerationsLost          ... or none: their generations are gone or behind (Redis lost writes)
    ├── CorruptRecord                stored bytes that do not read (a track cut short or damaged)
    ├── Misconfigured                a setting that does not match the store a service connects to
    ├── Unavailable                  a server does not answer
    │   ├── StoreUnavailable         Redis
    │   └── BrokerUnavailable        the Kafka-protocol broker
    └── ServerStartError             a local server could not be started
"""

from __future__ import annotations


class FencexError(Exception):
    """Base of every error fencex raises on purpose."""


class InvalidInput(FencexError, ValueError):
    """Input that fencex refuses, with a message that says what is wrong."""


class InvalidFence(InvalidInput):
    """A fence whose geometry or properties are not acceptable."""


class InvalidFix(InvalidInput):
    """A GPS fix that cannot be processed (goes to the dead-letter topic)."""


class LimitExceeded(InvalidInput):
    """Over a limit: ``limit`` names the setting; ``too_large`` for a size (413), else a count (422)."""

    def __init__(self, message: str, limit: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
        self.too_large = too_large


class NotFound(FencexError, LookupError):
    """The fence, device or tenant does not exist (or is another tenant's)."""


class IdTaken(FencexError):
    """The id (a fence's, a device's) is another tenant's."""


class InAnotherMob(FencexError):
    """Devices that are in another mob of their farm already: ``mob`` names it."""

    def __init__(self, mob: str, devices: list[str]) -> None:
        super().__init__(f"{', '.join(repr(d) for d in devices)} already in mob {mob!r}: take them out of it first")
        self.mob = mob
        self.devices = devices


class VersionConflict(FencexError):
    """The caller's version (If-Match) is not the stored version (``what``: of a fence, a mob)."""

    def __init__(self, expected: int | None, actual: int | None, what: str = "fence") -> None:
        super().__init__(f"{what} version is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual
        self.what = what


class Fenced(FencexError):
    """A worker's save was refused: another worker was assigned its partitions since (a newer generation)."""


class GenerationsLost(Fenced):
    """A worker's save was refused because its partitions' generations are gone or older than the
    worker's own claim (Redis lost writes: restarted empty, a host crash, a restore): no newer owner,
    nothing to wait for; the worker claims its partitions again."""


class CorruptRecord(FencexError, ValueError):
    """Stored bytes (a device's track) that do not read back: cut short, damaged or not of fencex."""


class Misconfigured(FencexError, RuntimeError):
    """A setting that does not match the store the service connects to (FENCEX_STORE_GROUPS): it refuses to start."""


class Unavailable(FencexError, ConnectionError):
    """A server fencex depends on does not answer."""


class StoreUnavailable(Unavailable):
    """Redis does not answer."""


class BrokerUnavailable(Unavailable):
    """The Kafka-protocol broker does not answer."""


class ServerStartError(FencexError, RuntimeError):
    """A local server (broker, redis, prometheus) could not be started."""
