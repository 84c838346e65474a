"""Small builders for fences and fixes used across the unit tests."""

from __future__ import annotations

from typing import Any

from fencex.fence import Fence
from fencex.fix import Fix
from fencex.follower import FenceFollower

# A 0.01 x 0.01 degree pasture near Uppsala (lon 17.60..17.61, lat 59.80..59.81).
LON0, LAT0 = 17.60, 59.80


def square(lon: float, lat: float, size: float = 0.01) -> dict:
    return {
        "type": "Polygon",
        "coordinates": [[[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]],
    }


def fence(
    fid: str = "north",
    lon: float = LON0,
    lat: float = LAT0,
    size: float = 0.01,
    tenant: str = "farm",
    version: int = 1,
    **props,
) -> Fence:
    return Fence(id=fid, tenant=tenant, version=version, geometry=square(lon, lat, size), **props)


def fix(ts: int, lon: float, lat: float, device: str = "cow-1") -> Fix:
    return Fix(device, ts, lon, lat)


def known(follower: FenceFollower) -> dict[str, Any]:
    """What a follower holds: each farm's indexed fences, quarantine, registrations, settings, mobs."""
    return {
        "farms": {t: sorted(f.id for f in shard.fences) for t, shard in follower.index.farms.items()},
        "quarantined": sorted(follower.quarantined),
        "tenants": follower.tenants,
        "rules": follower.rules,
        "mobs": {t: {d: (m.id, sorted(m.pastures)) for d, m in ms.items()} for t, ms in follower.mobs.items()},
    }
