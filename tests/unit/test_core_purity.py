"""The core (models, index, detector, pipeline) imports no server, web or metrics library."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "fencex",
    "fencex.fence",
    "fencex.fix",
    "fencex.index",
    "fencex.indexshard",
    "fencex.indexlaid",
    "fencex.detector",
    "fencex.event",
    "fencex.pipeline",
    "fencex.track",
    "fencex.late",
    "fencex.grazing",
    "fencex.trackbytes",
    "fencex.errors",
]
FORBIDDEN = ["redis", "faust", "fastapi", "prometheus_client", "aiokafka", "confluent_kafka", "mode", "starlette"]


def test_core_imports_no_adapters():
    code = (
        f"import sys\nfor m in {CORE!r}: __import__(m)\n"
        f"print(','.join(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the core imported {out}"
