"""GET /devices/{device_id}/track without servers: the store's answers stand in (a Track, the farm's
rules), the route's rules checked one per row: the window, from/to, the pages, the two formats, the
errors as problem+json."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fencex.errors import CorruptRecord, NotFound
from fencex.event import rfc3339
from fencex.fix import Fix
from fencex.herd import DEFAULT_RULES
from fencex.track import Track
from services.api.app import create_app
from services.api.routers.tracks import epoch_ms, page, times, track_window_ms
from services.api.settings import Settings

HOUR = 3_600_000
T0 = 1_780_000_000_000  # the newest fix of the test track
KEY = {"Authorization": "Bearer key-a"}


def track_of(times: list[int], extras: bool = False) -> Track:
    t = Track()
    for k, ts in enumerate(times):
        extra = {"accuracy_m": 3.5, "battery": 87.0} if extras and k % 2 == 0 else None
        t.add_fix(Fix("cow", ts, 17.6 + k * 1e-4, 59.8 + k * 1e-4, extra))
    return t


class Farm:
    """Just enough of the store: one farm's key, its cow's track, its herd rules."""

    def __init__(self, track: Track | Exception, rules: Any = DEFAULT_RULES) -> None:
        self.track = track
        self.rules = rules
        self.asked: list[tuple[str, str]] = []

    async def tenant_for_key(self, key: str) -> str | None:
        return {"key-a": "farm"}.get(key)

    async def device_track(self, tenant: str, device_id: str) -> Track:
        self.asked.append((tenant, device_id))
        if isinstance(self.track, Exception):
            raise self.track
        return self.track

    async def get_herd_rules(self, tenant: str) -> Any:
        return self.rules


def get(farm: Farm, url: str) -> httpx.Response:
    edge = create_app(Settings(key_cache_s=0))
    store = edge.state.store
    for name in ("tenant_for_key", "device_track", "get_herd_rules"):
        setattr(store, name, getattr(farm, name))
    edge.state.ready = True

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://api") as client:
            r = await client.get(url, headers=KEY)
            r.metrics = edge.state.metrics  # type: ignore[attr-defined]
            return r

    return asyncio.run(call())


def times_of(r: httpx.Response) -> list[str]:
    body = r.json()
    if body["type"] == "Feature":
        return list(body["properties"]["times"])
    return [f["properties"]["time"] for f in body["features"]]


# -- the pure parts -------------------------------------------------------------------------------

PAGE_ROWS = [
    # (times held, lo, hi, limit) -> (start, stop, next time)
    ([], 0, 100, 10, (0, 0, None)),  # nothing held
    ([10, 20, 30], 0, 100, 10, (0, 3, None)),  # all of it, one page
    ([10, 20, 30], 20, 100, 10, (1, 3, None)),  # lo is included
    ([10, 20, 30], 0, 20, 10, (0, 2, None)),  # hi is included
    ([10, 20, 30], 0, 100, 2, (0, 2, 30)),  # a full page: the next one starts at the next fix
    ([10, 20, 30], 30, 100, 2, (2, 3, None)),  # the last page, from the cursor
    ([10, 20, 30], 0, 20, 2, (0, 2, None)),  # a page that ends at hi is the last
    ([10, 20, 30], 40, 100, 2, (3, 3, None)),  # lo past every fix
    ([10, 20, 30], 25, 15, 2, (2, 2, None)),  # lo after hi: nothing
]


@pytest.mark.parametrize(("times", "lo", "hi", "limit", "want"), PAGE_ROWS)
def test_page(times, lo, hi, limit, want):
    assert page(track_of(times), lo, hi, limit) == want


EPOCH_ROWS = [
    (datetime(2026, 5, 28, 20, 26, 40, tzinfo=UTC), True, 1_780_000_000_000),  # whole ms: as it is
    (datetime(2026, 5, 28, 20, 26, 40, 1, tzinfo=UTC), True, 1_780_000_000_001),  # a start rounds up
    (datetime(2026, 5, 28, 20, 26, 40, 999, tzinfo=UTC), False, 1_780_000_000_000),  # an end rounds down
    (datetime(2026, 5, 28, 22, 26, 40, tzinfo=timezone(timedelta(hours=2))), True, 1_780_000_000_000),  # its zone
    (datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC), False, -1),  # before 1970: floor, not toward 0
]


@pytest.mark.parametrize(("at", "up", "want"), EPOCH_ROWS)
def test_epoch_ms(at, up, want):
    assert epoch_ms(at, up) == want


def test_epoch_ms_of_the_extreme_instants_does_not_overflow():
    low = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    high = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-23, minutes=-59)))
    assert epoch_ms(low, True) < 0 < epoch_ms(high, False)


def test_times_are_rfc3339_as_the_events_give_them():
    ms = [946_684_800_000, 951_782_400_999, T0, T0 + 1, T0 + 86_399_999, 4_102_444_799_999]  # 2000 .. 2099, a leap day
    assert times(ms) == [rfc3339(t) for t in ms]
    assert times([]) == []


def test_the_window_is_the_farms_and_24_hours_until_the_rules_have_one():
    assert track_window_ms(DEFAULT_RULES) == (
        round(DEFAULT_RULES.track_window_s * 1000) if hasattr(DEFAULT_RULES, "track_window_s") else 24 * HOUR
    )
    assert track_window_ms(SimpleNamespace(track_window_s=3600.0)) == HOUR  # type: ignore[arg-type]


# -- the route ------------------------------------------------------------------------------------


def test_a_line_of_the_whole_window_oldest_first_as_geojson():
    times = [T0 - 3 * HOUR, T0 - HOUR, T0]
    r = get(Farm(track_of(times)), "/devices/cow/track")
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json", r.text
    body = r.json()
    assert body == {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[17.6, 59.8], [17.6001, 59.8001], [17.6002, 59.8002]]},
        "properties": {"times": [rfc3339(t) for t in times]},
        "device_id": "cow",
        "next_cursor": None,
    }
    assert r.metrics.queries.labels("track")._value.get() == 1  # type: ignore[attr-defined]


def test_points_carry_time_and_the_extras_the_fix_had():
    r = get(Farm(track_of([T0 - 1000, T0], extras=True)), "/devices/cow/track?format=points")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["next_cursor"] is None and body["device_id"] == "cow"
    assert body["features"] == [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [17.6, 59.8]},
            "properties": {"time": rfc3339(T0 - 1000), "accuracy_m": 3.5, "battery": 87.0},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [17.6001, 59.8001]},
            "properties": {"time": rfc3339(T0)},
        },
    ]


@pytest.mark.parametrize(
    ("times", "geometry"),
    [
        ([T0], {"type": "Point", "coordinates": [17.6, 59.8]}),  # a LineString needs two positions
        ([], None),  # a device with no track kept (yet): an empty Feature, not an error
    ],
)
def test_a_line_of_one_fix_is_a_point_and_of_none_is_null(times, geometry):
    r = get(Farm(track_of(times)), "/devices/cow/track")
    assert r.status_code == 200 and r.json()["geometry"] == geometry, r.text
    assert r.json()["properties"]["times"] == [rfc3339(t) for t in times]


def test_fixes_older_than_the_farms_window_are_not_served():
    times = [T0 - 30 * HOUR, T0 - 24 * HOUR - 1, T0 - 24 * HOUR, T0]  # held until a snapshot lets trim drop them
    r = get(Farm(track_of(times)), "/devices/cow/track")
    assert times_of(r) == [rfc3339(T0 - 24 * HOUR), rfc3339(T0)]
    early = rfc3339(T0 - 48 * HOUR)  # asking for them does not bring them either
    assert times_of(get(Farm(track_of(times)), f"/devices/cow/track?from={early}")) == times_of(r)
    two_hours = SimpleNamespace(track_window_s=2 * 3600.0)
    r = get(Farm(track_of([T0 - 3 * HOUR, T0 - 2 * HOUR, T0]), two_hours), "/devices/cow/track")
    assert times_of(r) == [rfc3339(T0 - 2 * HOUR), rfc3339(T0)]


def test_from_and_to_are_included_and_read_in_their_zone():
    times = [T0 - 3 * HOUR, T0 - 2 * HOUR, T0 - HOUR, T0]
    start = datetime.fromtimestamp((T0 - 2 * HOUR) / 1000, UTC).astimezone(timezone(timedelta(hours=-5)))
    end = rfc3339(T0 - HOUR)
    r = get(Farm(track_of(times)), f"/devices/cow/track?from={start.isoformat().replace('+', '%2B')}&to={end}")
    assert times_of(r) == [rfc3339(T0 - 2 * HOUR), rfc3339(T0 - HOUR)], r.text


def test_pages_follow_the_cursor_to_the_end_in_order():
    times = [T0 - k * 60_000 for k in range(9, -1, -1)]
    farm = Farm(track_of(times, extras=True))
    seen: list[str] = []
    url = "/devices/cow/track?format=points&limit=3"
    pages = 0
    while True:
        r = get(farm, url)
        assert r.status_code == 200, r.text
        seen += times_of(r)
        pages += 1
        if r.json()["next_cursor"] is None:
            break
        assert r.json()["next_cursor"] == str(times[len(seen)])  # the next fix's time
        url = f"/devices/cow/track?format=points&limit=3&cursor={r.json()['next_cursor']}"
    assert seen == [rfc3339(t) for t in times] and pages == 4


def test_the_limit_defaults_to_500_and_stops_at_2000():
    times = [T0 - k * 1000 for k in range(2100, -1, -1)]
    r = get(Farm(track_of(times)), "/devices/cow/track")
    assert len(times_of(r)) == 500 and r.json()["next_cursor"] == str(times[500])
    assert len(times_of(get(Farm(track_of(times)), "/devices/cow/track?limit=2000"))) == 2000
    assert get(Farm(track_of(times)), "/devices/cow/track?limit=2001").status_code == 422


def is_problem(r: httpx.Response, status: int, words: str = "") -> None:
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
    assert words in r.json()["detail"], r.json()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (f"from={rfc3339(T0)}&to={rfc3339(T0 - 1)}", "is after to"),
        ("from=2026-05-28T20:00:00", "from"),  # no time zone
        ("to=1780000000", "RFC 3339"),  # a number is not read as unix seconds
        ("format=geojson", "format"),
        ("cursor=soon", "cursor"),
        ("limit=0", "limit"),
    ],
)
def test_bad_parameters_are_a_problem_that_names_them(query, words):
    is_problem(get(Farm(track_of([T0])), f"/devices/cow/track?{query}"), 422, words)


def test_another_farms_device_is_not_found():
    farm = Farm(NotFound("no device 'cow'"))
    is_problem(get(farm, "/devices/cow/track"), 404, "no device 'cow'")
    assert farm.asked == [("farm", "cow")]  # the store is asked for the caller's farm


def test_a_track_that_does_not_read_is_a_500_problem_that_says_so_and_is_counted():
    r = get(Farm(CorruptRecord("the stored track of device 'cow' does not read: not a track")), "/devices/cow/track")
    is_problem(r, 500, "the stored track of device 'cow' does not read")
    assert r.metrics.corrupt_records.labels("track")._value.get() == 1  # type: ignore[attr-defined]


def test_a_range_within_one_millisecond_is_empty_not_an_error():
    """from <= to, both inside one millisecond: from rounds up past to, yet the range is not reversed."""
    r = get(
        Farm(track_of([T0 - 1, T0 + 1])),
        "/devices/cow/track?from=2026-05-28T20:26:40.0002Z&to=2026-05-28T20:26:40.0009Z",
    )
    assert r.status_code == 200 and r.json()["properties"]["times"] == [], r.text
