"""The batch point query's shortcut (services.api.routers.query.only_numbers): the values' types are
checked one by one unless the body's bytes show that every value from its first ``[`` on is a number."""

from __future__ import annotations

import pytest

from services.api.routers.query import only_numbers


@pytest.mark.parametrize(
    ("raw", "numbers"),
    [
        (b'{"points": [[17.6, 59.8], [-1e-3, 2E5]]}', True),  # exponents are numbers
        (b'{"points": []}', True),
        (b'{"points": [[17.6, true]]}', False),
        (b'{"points": [[17.6, false]]}', False),
        (b'{"points": [[17.6, null]]}', False),
        (b'{"points": [[17.6, "59.8"]]}', False),
        (b'{"points": [[17.6, 59.8]], "x": 1}', False),  # a key after the array: its quotes
        (b'{"x": [true], "points": [[17.6, 59.8]]}', False),  # the first [ is another key's
        (b'{"points": 5}', False),  # no array at all
    ],
)
def test_only_numbers(raw, numbers):
    assert only_numbers(raw) is numbers
