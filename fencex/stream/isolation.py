"""A batch that failed after parsing, applied again record by record (called by the worker loop,
:class:`fencex.stream.loop.Processor`, with its lock held, after the reload that followed the failure)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fencex.errors import Unavailable
from fencex.stream import batch
from fencex.stream.ports import Record

if TYPE_CHECKING:
    from fencex.stream.loop import Processor


async def apply_isolated(p: Processor, batches: Mapping[int, Sequence[Record]]) -> None:
    """After a batch failed: apply it record by record; a record that raises (not a server
    that does not answer) is dead-lettered (``processing_error``) and its offset moves on."""
    for part, rs in batches.items():
        for r in rs:
            p.metrics.isolated.inc()
            ids = {f.device_id for f in batch.split([r], int(p.clock() * 1000)).fixes}
            if evicted := [d for d in ids if d not in p.states and d in p.device_partition]:  # to restore: saved
                p.cache.put(await p.store.load_states(evicted, p.device_partition), p.device_partition)
            before = {d: copy.deepcopy(p.states.get(d)) for d in ids}
            try:
                await p._apply_batches({part: [r]})
            except Unavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - this record's fault: dead-lettered, not retried
                for d, st in before.items():
                    if st is None:
                        p.states.pop(d, None)
                    else:
                        p.states[d] = st
                p.cache.index(before)  # (under the farm restored)
                await p.outbox.poisoned(r, exc)
                p.checkpoint.store_offset(part, r.offset + 1)
        if rs[-1].offset >= p._suspect.get(part, (0, -1))[1]:
            p._suspect.pop(part, None)
