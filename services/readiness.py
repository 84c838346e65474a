"""``/readyz`` of the API and the processor: ready while the service can serve some farm.

On a Redis Cluster one node down (or paused, until the cluster fails it over) is a partial outage: the
farms whose slots it serves get 503 from their own calls, every other farm is served. A pod that said
"not ready" for it would be taken off the load balancer with every other pod (each sees the same node
down), and no farm at all would be served. So the store's check (``RedisStore.health``) fails readiness
only when no node answers or the cluster says it serves no slot (``cluster_state:fail``); a node down is
reported as ``"status": "degraded"`` with the nodes down (and ``fencex_store_nodes_down``)."""

from __future__ import annotations

from typing import Any

from fencex.store.connection import StoreHealth


def readiness(checks: dict[str, bool], health: StoreHealth | None, quarantined: int) -> tuple[dict[str, Any], bool]:
    """The body of ``/readyz`` and whether the service is ready: ``checks`` (the service's own) and the
    store's (``health``, None before the store is connected)."""
    checks = {**checks, "redis": health is not None and health.serving}
    ok = all(checks.values())
    degraded = health is not None and health.degraded
    body = {
        "status": ("degraded" if degraded else "ready") if ok else "not ready",
        "checks": checks,
        "redis": {"nodes": health.nodes, "nodes_down": list(health.down)} if health is not None else None,
        # fences left out of the index are reported (each farm sees its own at /fences/quarantined), not fatal
        "quarantined_fences": quarantined,
    }
    return body, ok
