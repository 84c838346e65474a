"""Found in review: the batch point query had no bound on its answer. A farm with many
overlapping fences (its quota allows 10,000) asking for 100,000 points inside them made the
API build points x fences matches: 100 fences made a 128 MB answer and held the process (every
farm's requests) for 4 s; 10,000 fences would need gigabytes."""

from __future__ import annotations

import pytest

from tests.integration.test_api import is_problem
from tests.integration.test_api_limits import farm, start

pytestmark = pytest.mark.integration

SQUARE = {"type": "Polygon", "coordinates": [[[70, 70], [71, 70], [71, 71], [70, 71], [70, 70]]]}


def test_batch_answer_is_bounded(live):
    with start(live, FENCEX_MAX_BATCH_MATCHES="100000") as api:
        a = farm(api, "farm-a")
        features = [{"type": "Feature", "id": f"f{i}", "geometry": SQUARE, "properties": {}} for i in range(20)]
        assert api.post("/fences/import", json={"features": features}, headers=a).status_code == 201
        r = api.post("/query/fences", json={"points": [[70.5, 70.5]] * 4_000}, headers=a)
        assert r.status_code == 200 and r.json()["matches"] == 80_000, r.text[:300]
        r = api.post("/query/fences", json={"points": [[70.5, 70.5]] * 10_000}, headers=a)
        is_problem(r, 422, "matches")
        assert r.json()["limit"] == "max_batch_matches"


@pytest.mark.parametrize(
    "body",
    [
        b'{"points": [[70.5, true]]}',  # numpy would read true as 1.0
        b'{"points": [[70.5, "70.5"]]}',  # ... and "70.5" as 70.5
        b'{"points": [[70.5, 70.5]], "note": "x"}',  # a string elsewhere: the values are checked one by one
        b'{"points": [[70.5, null]]}',
        b'{"points": [[70.5, false], [1, 2]]}',
        b'{"points": [[[], []]]}',  # numbers only, no pair (review 16b #6: was 200 with 0 points)
    ],
)
def test_batch_values_that_are_not_numbers_are_refused(live, body):
    with start(live) as api:
        a = farm(api, "farm-a")
        r = api.post("/query/fences", content=body, headers={**a, "content-type": "application/json"})
        if b'"note"' in body:
            assert r.status_code == 200, r.text[:300]  # every point a pair of numbers: answered
        else:
            is_problem(r, 422, "pair")
