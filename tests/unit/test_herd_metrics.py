"""The herd per farm in Prometheus: events by farm and type (the outbox counts every event it
publishes), devices out / silent / low on battery read from the held states at scrape time, and
a bounded set of farm labels."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from fencex.detector import DeviceState
from fencex.event import EVENT_TYPES, Event
from fencex.index import FenceIndex
from fencex.metrics import OTHER_FARMS, FarmLabels, HerdCollector, PushMetrics
from fencex.stream.config import Topics
from fencex.stream.gauges import HerdGauges
from fencex.stream.loop import Processor
from fencex.stream.outbox import Outbox
from tests.unit.fakes import Broker, FakeConsumer, FakeFollower, FakeProducer, FakeStore

T0 = 1_780_000_000_000


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def state(tenant: str, out: bool = False, silent: bool = False, low: bool = False) -> DeviceState:
    s = DeviceState(tenant, T0, 17.6, 59.8)
    s.out, s.silent, s.low = out, silent, low
    return s


def test_farm_labels_are_bounded_and_stable():
    labels = FarmLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER_FARMS, "a", OTHER_FARMS, "b"]
    assert labels.labels() == ["a", "b", OTHER_FARMS]
    assert FarmLabels(0)("a") == OTHER_FARMS  # 0: totals only


def test_outbox_counts_every_event_by_farm_and_type_with_farms_beyond_the_limit_together():
    reg = CollectorRegistry()
    metrics = PushMetrics(reg, farms_max=2)
    outbox = Outbox(FakeProducer(Broker()), Topics(), metrics, lambda: T0 / 1000, 1000)

    def ev(type_: str, tenant: str, device: str = "ewe-1") -> Event:
        return Event(type_, tenant, device, "", 0, T0, 17.6, 59.8)

    asyncio.run(outbox.events([ev("escape", "hill"), ev("escape", "hill", "ewe-2"), ev("battery_low", "vale")]))
    asyncio.run(outbox.events([ev("escape", "moor"), ev("silent", "fen"), ev("return", "hill")]))
    assert sample(reg, "fencex_herd_events_total", farm="hill", type="escape") == 2
    assert sample(reg, "fencex_herd_events_total", farm="hill", type="return") == 1
    assert sample(reg, "fencex_herd_events_total", farm="vale", type="battery_low") == 1
    assert sample(reg, "fencex_herd_events_total", farm=OTHER_FARMS, type="escape") == 1  # moor
    assert sample(reg, "fencex_herd_events_total", farm=OTHER_FARMS, type="silent") == 1  # fen
    # every type of a labelled farm exists from its first event (zeros for rates and alerts)
    for t in EVENT_TYPES:
        assert sample(reg, "fencex_herd_events_total", farm="vale", type=t) is not None
    farms = {s.labels["farm"] for f in reg.collect() if f.name == "fencex_herd_events" for s in f.samples}
    assert farms == {"hill", "vale", OTHER_FARMS}


def test_gauges_count_the_held_states_per_farm_zeros_included():
    reg = CollectorRegistry()
    labels = FarmLabels(2)
    labels("quiet")  # a farm that had events: reported with zeros
    states = {
        "a1": state("hill", out=True),
        "a2": state("hill", out=True, low=True),
        "a3": state("hill"),
        "b1": state("vale", silent=True),  # beyond the limit (quiet, hill): counted under _other
        "c1": state("moor", out=True),
        "d1": state("fen", low=True, silent=True),
    }
    gauges = HerdGauges(lambda: states, labels)
    reg.register(HerdCollector(gauges.read))

    def read() -> dict[str, tuple[float | None, ...]]:
        names = ("fencex_herd_devices_out", "fencex_herd_devices_silent", "fencex_herd_devices_battery_low")
        return {f: tuple(sample(reg, n, farm=f) for n in names) for f in ("quiet", "hill", "vale", OTHER_FARMS)}

    expected = {"quiet": (0, 0, 0), "hill": (2, 0, 1), "vale": (None, None, None), OTHER_FARMS: (1, 2, 1)}
    assert read() == expected
    states["a1"] = state("hill")  # returned: a new state object, as the detector makes them
    del states["b1"]  # its partition went to another worker
    asyncio.run(gauges.refresh())  # what the /metrics page awaits: the same counts, walked in chunks
    assert read() == {**expected, "hill": (1, 0, 1), OTHER_FARMS: (1, 1, 1)}


def test_chunked_refresh_equals_the_walk_at_once(monkeypatch):
    import fencex.stream.gauges as gauges_module

    monkeypatch.setattr(gauges_module, "WALK_CHUNK", 7)
    states = {f"d{i}": state(f"farm-{i % 5}", out=i % 3 == 0, silent=i % 4 == 0, low=i % 7 == 0) for i in range(100)}
    gauges = HerdGauges(lambda: states, FarmLabels(3))
    asyncio.run(gauges.refresh())
    chunked = gauges.read()
    assert chunked == gauges.read()  # the second read walks at once
    assert sum(c[0] for c in chunked.values()) == 34 and sum(c[1] for c in chunked.values()) == 25


def test_the_fences_occupancy_is_counted_in_the_chunked_walk_not_at_scrape_time(monkeypatch):
    """A worker holding a million devices stalled for the whole walk at every scrape (the occupancy
    of its busiest fences, counted at once by the collector): now the /metrics page's refresh counts
    it in chunks with the flags, and the collector takes that count; without a refresh, it walks."""
    from collections import Counter

    import fencex.stream.gauges as gauges_module

    monkeypatch.setattr(gauges_module, "WALK_CHUNK", 7)
    states = {}
    for i in range(100):
        s = state(f"farm-{i % 5}")
        s.members = frozenset({f"f{i % 3}"} | ({"shade"} if i % 4 == 0 else set()))
        states[f"d{i}"] = s
    evicted = Counter({("farm-0", "f0"): 5})
    gauges = HerdGauges(lambda: states, FarmLabels(3), evicted_occupancy=lambda: evicted)
    assert gauges.occupancy() is None  # no refresh yet: the collector walks at once
    asyncio.run(gauges.refresh())
    got = gauges.occupancy()
    expected = Counter(evicted)
    gauges_module.count_members(states.values(), expected)
    assert got == expected and got[("farm-0", "f0")] == 5 + 7 and sum(got.values()) == 5 + 100 + 25
    assert gauges.occupancy() is None  # taken once: a scrape without a refresh does not read a stale count


def test_a_collar_silent_before_a_restart_is_silent_on_the_new_worker():
    """Loaded states count: the silent and battery_low events were published by the worker
    before, not by this one (counting events instead would say 0 here)."""
    broker, store = Broker(), FakeStore()
    store.states["ewe-17"] = state("hill", silent=True, low=True).to_obj()
    store.parts[("locations", 0)].add("ewe-17")
    reg = CollectorRegistry()
    metrics = PushMetrics(reg)
    consumer = FakeConsumer(broker)
    proc = Processor(store, consumer, FakeProducer(broker), FakeFollower(FenceIndex([])), metrics)
    reg.register(HerdCollector(HerdGauges(lambda: proc.states, metrics.herd.farms).read))

    async def main() -> None:
        await proc.start()
        await consumer.rebalance([0])

    asyncio.run(main())
    assert sample(reg, "fencex_herd_devices_silent", farm="hill") == 1
    assert b'fencex_herd_devices_battery_low{farm="hill"} 1.0' in generate_latest(reg)
