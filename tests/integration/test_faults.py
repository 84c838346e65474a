"""Fault injection against real servers (issue 9): each fault under a steady stream of fixes and
API traffic; 0 events lost, one id per transition, workers recovered without a restart, the API
answering 503 with Retry-After while a dependency is down and normally after.

The scenarios live in ``devtools/faults.py``; ``python -m devtools.faults --minutes 10`` runs
them at random for longer."""

from __future__ import annotations

import shutil

import pytest

from devtools.faults import run_fault

pytestmark = pytest.mark.integration


def _run(fault: str, tmp_path) -> None:
    out = run_fault(fault, tmp_path)
    print("\n" + out.summary(), *out.notes, sep="\n  ")
    assert out.expected > 50, "a stream with real crossings"
    assert out.ok, "\n".join(out.problems())


def test_redis_killed_and_restarted_on_its_append_only_file(tmp_path):
    _run("redis-kill", tmp_path)


def test_redis_paused_past_the_client_timeout(tmp_path):
    _run("redis-pause", tmp_path)


def test_redis_out_of_memory(tmp_path):
    _run("redis-oom", tmp_path)


@pytest.mark.skipif(not shutil.which("moto_server"), reason='a persistent broker needs S3: pip install "moto[server]"')
def test_broker_killed_and_restarted_on_its_storage(tmp_path):
    _run("broker-kill", tmp_path)


def test_broker_frozen_past_the_client_timeouts(tmp_path):
    _run("broker-freeze", tmp_path)


def test_worker_killed_during_a_fence_change_keeps_event_ids(tmp_path):
    _run("worker-kill-fence-change", tmp_path)


def test_worker_stalled_past_its_session_timeout_does_not_overwrite_newer_states(tmp_path):
    _run("worker-stall", tmp_path)
