"""Records in, fixes out: the pure first step of the worker loop.

:func:`split` turns a batch of consumed records into the fixes to apply (with their
partitions), the fixes to reroute (packed under another device's key) and the dead
letters, one per bad record. No I/O: the loop does the sending.

A dead letter is bounded whatever the record held: its value is the original cut to
``max_bytes`` (headers ``size`` and ``sha256`` describe the original), its key to :data:`MAX_KEY`
(``key_size``, ``key_sha256``), and its headers
list at most :data:`MAX_LISTED` bad elements as ``[index, reason]`` pairs (``errors``,
with ``errors_total``), the first one's ``reason`` and ``detail``, and the ``source``
``topic/partition/offset``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from fencex.fix import DEFAULT_MAX_SKEW_MS, Fix, Rejected, parse_record
from fencex.kafka.producer import Headers, Outgoing
from fencex.stream.config import DEFAULT_DEAD_MAX_BYTES
from fencex.stream.ports import Record

MAX_LISTED = 100  # bad elements listed in a dead letter's headers
MAX_DETAIL = 1024  # characters of the first bad element's detail
MAX_KEY = 1024  # bytes of a record's key kept in its dead letter (a longer one: cut, its size and hash in headers)


@dataclass(slots=True)
class Split:
    fixes: list[Fix] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)  # each fix's partition
    reroutes: list[Fix] = field(default_factory=list)  # packed under another key: sent back under their own
    rejected: list[Rejected] = field(default_factory=list)  # every bad element (for the metrics)
    dead: list[Outgoing] = field(default_factory=list)  # one dead letter per bad record
    dead_reasons: list[str] = field(default_factory=list)  # each dead letter's reason (for the metrics)
    records: int = 0


def source_of(record: Record) -> bytes:
    return f"{record.topic}/{record.partition}/{record.offset}".encode()


def dead_letter(
    record: Record, rejected: Sequence[Rejected], max_bytes: int = DEFAULT_DEAD_MAX_BYTES
) -> tuple[Outgoing, str]:
    """One bounded dead letter for a record and the reasons it was refused; and its reason."""
    raw = record.value if record.value is not None else b""
    first = rejected[0]
    listed = [[r.index, r.reason] for r in rejected[:MAX_LISTED]]
    headers: Headers = [
        ("reason", first.reason.encode()),
        ("detail", first.detail[:MAX_DETAIL].encode()),
        ("errors", orjson.dumps(listed)),
        ("errors_total", str(len(rejected)).encode()),
        ("source", source_of(record)),
        ("size", str(len(raw)).encode()),
        ("sha256", hashlib.sha256(raw).hexdigest().encode()),
    ]
    if len(raw) > max_bytes:
        headers.append(("truncated", b"1"))
    key = record.key
    if key is not None and len(key) > MAX_KEY:
        headers += [("key_size", str(len(key)).encode()), ("key_sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:MAX_KEY]
    return (key, raw[:max_bytes], headers), first.reason


def split(
    records: Iterable[Record],
    received_ms: int,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    dead_max_bytes: int = DEFAULT_DEAD_MAX_BYTES,
) -> Split:
    """Parse ``records`` (in order) received at ``received_ms`` (epoch ms)."""
    out = Split()
    fixes, partitions, rejected, reroutes = out.fixes, out.partitions, out.rejected, out.reroutes
    n_records = 0
    for r in records:
        n_records += 1
        n, nrej = len(fixes), len(rejected)
        value = r.value
        parse_record(value if value is not None else b"", fixes, rejected, received_ms, max_skew_ms)
        got = len(fixes) - n
        if got:
            raw_key = r.key
            key = raw_key.decode("utf-8", "replace") if raw_key is not None else None
            # (one fix, the common record, tested without a slice)
            if key is None or (fixes[n].device_id != key if got == 1 else any(f.device_id != key for f in fixes[n:])):
                # A device's fixes must all arrive on its own key's partition, or two workers
                # could hold its state at once. Fixes packed under another key (a gateway's,
                # or none) go back to the topic under their device's key, then count there.
                mine = [f for f in fixes[n:] if f.device_id == key]
                reroutes.extend(f for f in fixes[n:] if f.device_id != key)
                del fixes[n:]
                fixes.extend(mine)
                got = len(mine)
            if got == 1:
                partitions.append(r.partition)
            elif got:
                partitions.extend([r.partition] * got)
        if len(rejected) > nrej:
            letter, reason = dead_letter(r, rejected[nrej:], dead_max_bytes)
            out.dead.append(letter)
            out.dead_reasons.append(reason)
    out.records = n_records
    return out


def undelivered_stub(topic: str, key: bytes | None, headers: Headers, reason: str, error: str) -> Outgoing:
    """A small dead letter standing for a record the broker refused for good: where it came from, why."""
    kept = [(k, v) for k, v in headers if k in ("source", "reason", "sha256", "size")]
    return (
        key[:MAX_KEY] if key is not None else None,
        b"",
        [
            ("reason", b"undelivered"),
            ("undelivered", reason.encode()),
            ("topic", topic.encode()),
            ("error", error[:MAX_DETAIL].encode()),
            *kept,
        ],
    )


def poisoned(record: Record, detail: str, max_bytes: int = DEFAULT_DEAD_MAX_BYTES) -> Outgoing:
    """The dead letter of a record that made a step after parsing fail (reason ``processing_error``)."""
    raw = record.value if record.value is not None else b""
    letter, _ = dead_letter(record, [Rejected("processing_error", detail, raw)], max_bytes)
    return letter
