"""A seeded, reproducible herd: farms of pasture fences and animals grazing across them.

Pastures are a grid of irregular quadrilaterals (about 200 m across, near
Uppsala) with lanes between them; farms are blocks of 10 x 10 pastures. Each
animal has a home pasture and random-walks with a pull back towards it, so it
crosses its pasture's border now and then: enter and exit events, as on a farm.
"""

from __future__ import annotations

import math

import numpy as np

from fencex.fence import Fence

ORIGIN_LON, ORIGIN_LAT = 17.30, 59.60
CELL_LAT = 0.002  # about 220 m
CELL_LON = CELL_LAT / math.cos(math.radians(ORIGIN_LAT))
FARM_SIDE = 10
Fix = dict[str, str | int | float]  # a fix as a collar sends it (JSON)


def pastures(n: int, seed: int = 1, dwell_s: float | None = 300.0) -> list[Fence]:
    """``n`` pasture fences on a grid, in farms of 100 (tenant ``farm-NNN``)."""
    rng = np.random.default_rng(seed)
    cols = max(1, math.ceil(math.sqrt(n)))
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0 = ORIGIN_LON + c * CELL_LON
        y0 = ORIGIN_LAT + r * CELL_LAT
        j = rng.uniform(0.06, 0.14, 8)  # inset corners: lanes between pastures
        ring = [
            [x0 + j[0] * CELL_LON, y0 + j[1] * CELL_LAT],
            [x0 + (1 - j[2]) * CELL_LON, y0 + j[3] * CELL_LAT],
            [x0 + (1 - j[4]) * CELL_LON, y0 + (1 - j[5]) * CELL_LAT],
            [x0 + j[6] * CELL_LON, y0 + (1 - j[7]) * CELL_LAT],
        ]
        ring.append(ring[0])
        farm = f"farm-{(r // FARM_SIDE) * ((cols + FARM_SIDE - 1) // FARM_SIDE) + c // FARM_SIDE:03d}"
        out.append(
            Fence.model_construct(
                id=f"pasture-{i:06d}",
                tenant=farm,
                name=f"Pasture {i}",
                tags=["pasture"],
                version=1,
                dwell_s=dwell_s,
                exit_buffer_m=None,
                updated_at=0.0,
                geometry={"type": "Polygon", "coordinates": [[[round(x, 7), round(y, 7)] for x, y in ring]]},
            )
        )
    return out


class Herd:
    """``n`` animals, each at home in one of ``fences``, grazing."""

    def __init__(self, n: int, fences: list[Fence], seed: int = 1, roam: float = 0.55) -> None:
        self.rng = np.random.default_rng(seed + 1000)
        self.ids = [f"collar-{i:06d}" for i in range(n)]
        home = np.arange(n) % max(len(fences), 1)
        self.tenant = [fences[h].tenant for h in home] if fences else ["default"] * n
        cx, cy = [], []
        for h in home:
            ring = fences[h].geometry["coordinates"][0][:4]
            cx.append(sum(p[0] for p in ring) / 4)
            cy.append(sum(p[1] for p in ring) / 4)
        self.home_lon = np.asarray(cx)
        self.home_lat = np.asarray(cy)
        self.roam = roam  # how far from home, in cells, an animal tends to wander
        self.lon = self.home_lon + self.rng.normal(0, 0.25, n) * CELL_LON
        self.lat = self.home_lat + self.rng.normal(0, 0.25, n) * CELL_LAT

    def tenants(self) -> dict[str, str]:
        return dict(zip(self.ids, self.tenant))

    def step(self, idx: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Move the animals ``idx`` one step (a random walk pulled home); return their positions."""
        lon, lat = self.lon[idx], self.lat[idx]
        k = len(lon)
        pull = 0.08
        lon += (self.home_lon[idx] - lon) * pull + self.rng.normal(0, 0.09 * self.roam, k) * CELL_LON
        lat += (self.home_lat[idx] - lat) * pull + self.rng.normal(0, 0.09 * self.roam, k) * CELL_LAT
        self.lon[idx], self.lat[idx] = lon, lat
        return lon, lat


def records(
    herd: Herd, idx: np.ndarray, pack: int, base_ms: int | np.ndarray, step_ms: int = 1000
) -> list[tuple[str, list[Fix]]]:
    """``pack`` steps of the animals ``idx``, as one record per animal holding its own fixes
    (a collar uploading its buffered track), keyed by its id: a device's fixes always travel
    under its own key, so they reach one partition, in order. ``base_ms``: the first fix's
    time, one for all or one per animal."""
    bases = np.broadcast_to(np.asarray(base_ms, dtype=np.int64), (len(idx),)).tolist()
    tracks: list[list[Fix]] = [[] for _ in range(len(idx))]
    ids = herd.ids
    for k in range(pack):
        lon, lat = herd.step(idx)
        for track, base, i, x, y in zip(tracks, bases, idx.tolist(), lon.tolist(), lat.tolist()):
            track.append({"device_id": ids[i], "ts": base + k * step_ms, "lon": round(x, 7), "lat": round(y, 7)})
    return [(ids[i], t) for i, t in zip(idx.tolist(), tracks)]
