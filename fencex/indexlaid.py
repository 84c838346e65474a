"""The small farms' layers of the fence index laid end to end, looked up all at once (:class:`Laid`).

The index (:mod:`fencex.index`) lays the fences of every farm of up to :data:`~fencex.indexshard.SMALL`
fences in one set of arrays, so that a batch's points are looked up with no per-farm work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fencex.indexshard import _NO_BOUNDS, _NO_GEOMS, Layer, exact

MAX_CELLS = 64  # a fence over more of its layer's cells is kept aside: every point of its farm is boxed against it
_SPAN = 1 << 21  # columns (and rows) of a layer's grid that a key holds; keys for up to 2^21 layers
_NO_ROWS = np.empty(0, dtype=np.intp)


def _key(codes: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    keys: np.ndarray = (codes.astype(np.int64) << 42) | (ix << 21) | iy
    return keys


def frame_of(layer: Layer) -> tuple[float, float, float]:
    """A layer's grid, worked out on first use and kept with it: its origin (the corner of its fences'
    boxes) and cell (their median size, at least 1e-5 degrees, and enough that the key holds the layer)."""
    if layer.frame is None:
        b = layer.bounds
        if not len(b):
            layer.frame = (0.0, 0.0, 1.0)
        else:
            x0, y0 = float(b[:, 0].min()), float(b[:, 1].min())
            extent = max(float(b[:, 2].max()) - x0, float(b[:, 3].max()) - y0)
            size = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
            layer.frame = (x0, y0, max(size, 1e-5, extent / (_SPAN - 2)))
    return layer.frame


class Laid:
    """Layers of small farms laid end to end: the points of all of them looked up at once.

    Each layer's fences are in a grid of its own (its :attr:`Layer.frame`: origin and cell, about the
    size of its typical fence), all the layers' cells in one sorted array of keys (layer, column, row):
    a point is looked up in its own farm's cell, so it is boxed against the few fences there, not
    against every fence of its farm. A fence over more than :data:`MAX_CELLS` cells (a farm's
    boundary around its paddocks) is kept aside and every point of its farm is boxed against it."""

    __slots__ = (
        "aside",
        "big",
        "bounds",
        "cell",
        "count",
        "geoms",
        "ids",
        "items",
        "keys",
        "ox",
        "oy",
        "spans",
        "start",
    )

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.count = np.fromiter((len(layer) for layer in layers), dtype=np.intp, count=len(layers))
        self.start = np.cumsum(self.count) - self.count
        some = [layer for layer in layers if len(layer)]
        self.bounds = np.concatenate([layer.bounds for layer in some]) if some else _NO_BOUNDS
        self.geoms = np.concatenate([layer.geoms for layer in some]) if some else _NO_GEOMS
        self.ids = np.concatenate([layer.ids for layer in some]) if some else _NO_GEOMS
        frames = np.array([frame_of(layer) for layer in layers], dtype=np.float64).reshape(-1, 3)
        self.ox, self.oy, self.cell = frames[:, 0].copy(), frames[:, 1].copy(), frames[:, 2].copy()
        self._grid()

    def relaid(self, drop: np.ndarray, add: Sequence[Layer]) -> Laid:
        """These layers but those ``drop`` says (by place; they stay, empty), and ``add`` after them:
        a copy of the arrays and a new grid of keys (vectorised), no walk over the layers kept."""
        new = object.__new__(Laid)
        more = Laid(add)
        keep = np.repeat(~drop, self.count)
        new.count = np.concatenate((np.where(drop, 0, self.count), more.count))
        new.start = np.cumsum(new.count) - new.count
        new.bounds = np.concatenate((self.bounds[keep], more.bounds))
        new.geoms = np.concatenate((self.geoms[keep], more.geoms))
        new.ids = np.concatenate((self.ids[keep], more.ids))
        new.ox, new.oy = np.concatenate((self.ox, more.ox)), np.concatenate((self.oy, more.oy))
        new.cell = np.concatenate((self.cell, more.cell))
        new._grid()
        return new

    def _cells(self, codes: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column and row of points (or box corners) in their layers' grids, clamped to the key's range."""
        cell = self.cell[codes]
        ix = np.clip(np.floor((xs - self.ox[codes]) / cell), 0, _SPAN - 1).astype(np.int64)
        iy = np.clip(np.floor((ys - self.oy[codes]) / cell), 0, _SPAN - 1).astype(np.int64)
        return ix, iy

    def _grid(self) -> None:
        """The sorted cell keys (``keys``, with ``spans``: start and count of each in ``items``, the
        fences' positions) and the fences kept aside (``big``: positions, by layer then position)."""
        codes = np.repeat(np.arange(len(self.count), dtype=np.int64), self.count)
        b = self.bounds
        ix0, iy0 = self._cells(codes, b[:, 0], b[:, 1])
        ix1, iy1 = self._cells(codes, b[:, 2], b[:, 3])
        w, h = ix1 - ix0 + 1, iy1 - iy0 + 1
        n = w * h
        big = n > MAX_CELLS
        self.big = np.nonzero(big)[0]  # by position: by layer
        layer = codes[self.big]
        self.aside = np.stack(
            (np.searchsorted(layer, np.arange(len(self.count))), np.bincount(layer, minlength=len(self.count)))
        )
        rows = np.nonzero(~big)[0]
        n, w = n[rows], w[rows]
        at = np.repeat(rows, n)
        k = np.arange(len(at), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        wr = np.repeat(w, n)
        keys = _key(codes[at], ix0[at] + k % wr, iy0[at] + k // wr)
        order = np.argsort(keys, kind="stable")  # a cell's fences by position (by id within a farm)
        self.items = at[order]
        self.keys, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
        self.spans = np.stack((starts, counts))

    def match(
        self, xs: np.ndarray, ys: np.ndarray, pts: np.ndarray, codes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(point, id) of each point ``pts[i]`` (ascending) in a geometry of layer ``codes[i]``, by point
        then id; and the exact tests made. Each point against the boxes of its farm's cell and of its farm's
        fences kept aside, then exactly against the boxes that hold it."""
        px, py = xs[pts], ys[pts]
        pt, pos = _NO_ROWS, _NO_ROWS
        if len(self.keys):
            keys = _key(codes, *self._cells(codes, px, py))
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            found = np.nonzero(self.keys[at] == keys)[0]
            at = at[found]
            starts, cnt = self.spans[0][at], self.spans[1][at]
            pt = np.repeat(found, cnt)
            pos = self.items[np.repeat(starts - (np.cumsum(cnt) - cnt), cnt) + np.arange(len(pt))]
        if len(self.big):
            bpt, bpos = self._aside(codes)
            pt, pos = np.concatenate((pt, bpt)), np.concatenate((pos, bpos))
        b = self.bounds[pos]
        x, y = px[pt], py[pt]
        inbox = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
        pt, pos = pt[inbox], pos[inbox]
        hit = exact(self.geoms[pos], x[inbox], y[inbox])
        pt, pos = pt[hit], pos[hit]
        order = np.lexsort((pos, pt))
        return pts[pt[order]], self.ids[pos[order]], len(hit)

    def _aside(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point, position) of each point with every fence of its layer kept aside."""
        first, cnt = self.aside[0][codes], self.aside[1][codes]
        pt = np.repeat(np.arange(len(codes)), cnt)
        return pt, self.big[np.repeat(first - (np.cumsum(cnt) - cnt), cnt) + np.arange(len(pt))]
