"""Schema fuzzing: schemathesis against the live API (a real server, Redis and broker), every
operation but the endless event stream, all checks, stateful links, a fixed seed and a bounded
number of examples. Longer runs: ``python -m devtools.fuzz_api --examples N``."""

from __future__ import annotations

import pytest

from devtools.fuzz_api import fuzz, prepare
from tests.integration.conftest import ADMIN_KEY, wait_api

pytestmark = pytest.mark.integration
SEED = 20260528
EXAMPLES = 25


def test_the_api_does_what_its_openapi_document_says(live, tmp_path):
    proc, base = live.start_api()
    wait_api(base, proc)
    key = prepare(base, ADMIN_KEY)
    result = fuzz(base, key, ADMIN_KEY, examples=EXAMPLES, seed=SEED, workdir=tmp_path)
    print(f"schemathesis: seed {SEED}: {result.operations} operations, {result.cases} test cases")
    assert result.returncode == 0, result.output[-20_000:]
    assert result.operations == 40 and result.cases > 1000, result.output[-3000:]
    assert proc.poll() is None
