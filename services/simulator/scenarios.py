"""The herd's alarms, acted out (``--scenarios``): what a farmer should be told about.

A seeded cast and a script that repeats every ``cycle_s`` seconds of the simulator's run:

- two *wanderers* (animals at home on the south edge of the grid) walk out through a gap
  into the open south of their pasture and are brought back, one after 3 minutes, one after
  20 (long enough for the FencexHerdAnimalsOut alert);
- every collar reports its battery; three run down fast, below the farm's 20 %, and one of
  them is replaced (back to 100 %) a few minutes later;
- one collar goes *quiet*: it sends nothing for ``quiet_s`` seconds, then resumes;
- a *jumper* sends one fix 2 km away now and then, and a few collars send a *wildly
  inaccurate* fix (``accuracy_m`` of hundreds of metres, placed far off) now and then.

The rest of the herd grazes calmly (``CALM_ROAM``): the lanes between pastures are outside
every pasture, so an animal that lingers in one has escaped, and only the cast should.

Without ``--scenarios`` none of it happens: the fixes are the herd's alone (the benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fencex.fence import Fence
from services.simulator.herd import CELL_LAT, ORIGIN_LAT, Fix, Herd

CYCLE_S = 1800.0
WANDER = ((30.0, 210.0), (60.0, 1260.0))  # (walks out, brought back), seconds into the cycle
RUN_DOWN_FROM, RUN_DOWN_PER_S = 32.0, 0.1  # % at the cycle's start, % lost per second
REPLACED_AT = 400.0  # the first run-down collar gets a new battery
QUIET_AT = 240.0  # the quiet collar stops sending, for quiet_s
JUMP_EVERY_S, INACCURATE_EVERY_S = 150.0, 97.0
CALM_ROAM = 0.3  # the rest of the herd grazes within its pastures: out in a lane is an escape now


@dataclass
class Scenarios:
    herd: Herd
    fences: list[Fence]
    seed: int = 1
    quiet_s: float = 200.0
    cycle_s: float = CYCLE_S
    wanderers: list[int] = field(init=False)
    run_down: list[int] = field(init=False)
    quiet: int = field(init=False)
    jumper: int = field(init=False)
    inaccurate: list[int] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed + 2000)
        h = self.herd
        h.roam = min(h.roam, CALM_ROAM)
        h.lon = h.home_lon + (h.lon - h.home_lon) * 0.4  # and starts in its pastures, not in the lanes
        h.lat = h.home_lat + (h.lat - h.home_lat) * 0.4
        n = len(self.herd.ids)
        # at home on the grid's south edge: south of it is open ground, no pasture
        edge = [i for i in range(n) if self.herd.home_lat[i] < ORIGIN_LAT + CELL_LAT]
        self.wanderers = [int(i) for i in rng.choice(edge, size=min(len(WANDER), len(edge)), replace=False)]
        others = [int(i) for i in rng.permutation(n) if int(i) not in self.wanderers]
        self.run_down, others = others[:3], others[3:]
        self.quiet, self.jumper, others = others[0], others[1], others[2:]
        self.inaccurate = others[:3]
        self._home = {i: (float(self.herd.home_lon[i]), float(self.herd.home_lat[i])) for i in self.wanderers}
        self._battery = 100.0 - rng.uniform(0, 15, n)  # the healthy collars: full, draining slowly
        self._last_jump = self._last_bad = -1.0
        self._sent = np.zeros(n, dtype=np.int64)

    def cast(self) -> dict[str, list[str]]:
        ids = self.herd.ids
        return {
            "wander out": [ids[i] for i in self.wanderers],
            "battery runs down": [ids[i] for i in self.run_down],
            "goes quiet": [ids[self.quiet]],
            "jumps": [ids[self.jumper]],
            "inaccurate fixes": [ids[i] for i in self.inaccurate],
        }

    def before_step(self, t: float) -> None:
        """Wanderers head out or home (the herd's random walk pulls them there)."""
        c = t % self.cycle_s
        for i, (out_at, back_at) in zip(self.wanderers, WANDER):
            lon, lat = self._home[i]
            if out_at <= c < back_at:
                lat = ORIGIN_LAT - 0.3 * CELL_LAT  # about 65 m south of the grid: out through the gap
            self.herd.home_lon[i], self.herd.home_lat[i] = lon, lat

    def battery(self, i: int, t: float) -> float:
        c = t % self.cycle_s
        if i in self.run_down:
            if i == self.run_down[0] and c >= REPLACED_AT:
                return 100.0
            return round(max(RUN_DOWN_FROM - RUN_DOWN_PER_S * c, 5.0), 1)
        return round(float(self._battery[i]) - c / 600.0, 1)  # about 3 % an hour... of a cycle

    def apply(self, batch: list[tuple[str, list[Fix]]], idx: list[int], t: float) -> list[tuple[str, list[Fix]]]:
        """The records of the animals ``idx`` (in order) as the scenarios change them at ``t``
        seconds into the run: batteries added, the quiet collar's dropped, a jump or a bad fix."""
        c = t % self.cycle_s
        out = []
        jump = c - self._last_jump >= JUMP_EVERY_S or self._last_jump > c
        bad = c - self._last_bad >= INACCURATE_EVERY_S or self._last_bad > c
        for (key, track), i in zip(batch, idx, strict=True):
            if i == self.quiet and QUIET_AT <= c < QUIET_AT + self.quiet_s:
                continue
            for f in track:
                f["battery"] = self.battery(i, t)
            if i == self.jumper and jump:
                track[-1]["lon"] = round(float(track[-1]["lon"]) + 0.035, 7)  # about 2 km east
                self._last_jump, jump = c, False
            elif i in self.inaccurate and bad:
                track[-1]["accuracy_m"] = 250.0
                track[-1]["lat"] = round(float(track[-1]["lat"]) - 1.5 * CELL_LAT, 7)  # far off, somewhere
                self._last_bad, bad = c, False
            out.append((key, track))
        return out
