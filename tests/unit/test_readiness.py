"""/readyz of the API and the processor on a Redis Cluster with a node down (review15d #3): the API pinged
every node, so one node down made every API pod not ready, also for the farms on the healthy nodes, and the
load balancer then served no farm at all. Ready now while some farm can be served; a node down is
"degraded" (its nodes listed, fencex_store_nodes_down), not ready only when no node answers or the cluster
serves no slot. One row a rule."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fencex.errors import StoreUnavailable
from fencex.store.connection import StoreHealth
from services.api.app import create_app
from services.api.settings import Settings
from services.readiness import readiness

NODES = ("10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002")

ROWS = [
    # (the store's health, HTTP status, body status)
    (StoreHealth(1), 200, "ready"),  # one Redis that answers
    (StoreHealth(1, ("redis:6379",), False), 503, "not ready"),  # one Redis down: nobody can be served
    (StoreHealth(3), 200, "ready"),  # every node answers
    (StoreHealth(3, NODES[2:]), 200, "degraded"),  # one node down: its farms get 503, the others are served
    (StoreHealth(3, NODES[1:]), 200, "degraded"),  # two of three: the third's farms are still served
    (StoreHealth(3, NODES), 503, "not ready"),  # no node answers
    (StoreHealth(3, NODES[2:], cluster_ok=False), 503, "not ready"),  # cluster_state:fail: no slot served
    (StoreHealth(3, (), cluster_ok=False), 503, "not ready"),
]


def api_readyz(health: StoreHealth) -> tuple[httpx.Response, str]:
    edge = create_app(Settings())
    store = edge.state.store

    async def answer() -> StoreHealth:
        return health

    async def ping() -> bool:  # what a ping of every node says with one of them down
        if health.down:
            raise StoreUnavailable("the redis cluster does not answer: a node timed out")
        return True

    store.health, store.ping = answer, ping  # type: ignore[method-assign]
    edge.state.ready = edge.state.broker_ok = True

    async def call() -> tuple[httpx.Response, str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://api") as client:
            return await client.get("/readyz"), (await client.get("/metrics")).text

    return asyncio.run(call())


@pytest.mark.parametrize(("health", "code", "status"), ROWS)
def test_the_api_is_ready_while_some_farm_can_be_served(health, code, status):
    r, metrics = api_readyz(health)
    body = r.json()
    assert (r.status_code, body["status"]) == (code, status), body
    assert body["checks"] == {"broker": True, "redis": code == 200}
    assert body["redis"] == {"nodes": health.nodes, "nodes_down": list(health.down)}
    assert f"fencex_store_nodes_down {float(len(health.down))}" in metrics
    assert f"fencex_store_nodes {float(health.nodes)}" in metrics


@pytest.mark.parametrize(("health", "code", "status"), ROWS)
def test_the_processor_is_ready_while_some_farm_can_be_served(health, code, status):
    body, ok = readiness({"processing": True}, health, 0)
    assert (ok, body["status"]) == (code == 200, status)
    assert body["redis"]["nodes_down"] == list(health.down)


def test_not_ready_whatever_the_store_while_the_service_itself_is_not():
    body, ok = readiness({"processing": False}, StoreHealth(3), 0)
    assert not ok and body["status"] == "not ready"
    body, ok = readiness({"broker": True}, None, 0)  # the store not connected yet
    assert not ok and body["checks"]["redis"] is False
