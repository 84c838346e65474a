"""Locust load for fencex: farmers, people asking questions, and collars publishing fixes.

    locust -f loadtest/locustfile.py --headless -u 30 -r 10 -t 1m --host http://127.0.0.1:8000

Environment: FENCEX_ADMIN_KEY (to create the load's own farm and key at start) or
FENCEX_API_KEY (an existing farm's key); FENCEX_KAFKA_BOOTSTRAP for the device publishers
(they are skipped without it); FENCEX_LOCATIONS_TOPIC (default locations).
"""

from __future__ import annotations

import os
import random
import time
import uuid

import gevent
import orjson
import requests
from confluent_kafka import Producer
from locust import HttpUser, User, between, events, task

from fencex.kafka.producer import client_config

FARM_LON, FARM_LAT = 18.50, 60.10  # away from the simulator's pastures
STATE: dict[str, str] = {}


def square(lon: float, lat: float, size: float = 0.004) -> dict:
    return {
        "type": "Polygon",
        "coordinates": [
            [[lon, lat], [lon + size, lat], [lon + size, lat + size / 2], [lon, lat + size / 2], [lon, lat]]
        ],
    }


@events.test_start.add_listener
def _farm(environment, **_kw) -> None:
    """One farm for the whole run, with a few pastures to query."""
    key = os.environ.get("FENCEX_API_KEY")
    host = environment.host
    if not key:
        admin = os.environ["FENCEX_ADMIN_KEY"]
        farm = f"load-{uuid.uuid4().hex[:6]}"
        r = requests.post(
            f"{host}/admin/tenants", json={"id": farm}, headers={"Authorization": f"Bearer {admin}"}, timeout=10
        )
        r.raise_for_status()
        key = r.json()["api_key"]
    STATE["auth"] = f"Bearer {key}"
    for i in range(20):
        requests.put(
            f"{host}/fences/base-{i}",
            json={
                "type": "Feature",
                "geometry": square(FARM_LON + i * 0.005, FARM_LAT),
                "properties": {"name": f"Pasture {i}", "tags": ["load"]},
            },
            headers={"Authorization": STATE["auth"]},
            timeout=10,
        ).raise_for_status()


class FarmerUser(HttpUser):
    """Draws, edits and removes fences, as a farmer reorganising paddocks."""

    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def paddock_lifecycle(self) -> None:
        h = {"Authorization": STATE["auth"]}
        fid = f"tmp-{uuid.uuid4().hex[:10]}"
        lon = FARM_LON + random.uniform(0, 0.1)
        with self.client.post(
            "/fences",
            json={"type": "Feature", "id": fid, "geometry": square(lon, FARM_LAT + 0.01)},
            headers=h,
            name="/fences",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"create: {r.status_code}")
                return
            etag = r.headers["etag"]
        self.client.patch(
            f"/fences/{fid}", json={"name": "rested"}, headers={**h, "If-Match": etag}, name="/fences/{id}"
        )
        self.client.get(f"/fences/{fid}", headers=h, name="/fences/{id}")
        self.client.delete(f"/fences/{fid}", headers=h, name="/fences/{id}")


class QueryUser(HttpUser):
    """Asks where things are: point lookups, a small spatial join, occupancy."""

    weight = 3
    wait_time = between(0.05, 0.2)

    @task(10)
    def which_fences(self) -> None:
        self.client.get(
            "/query/fences",
            params={"lon": FARM_LON + random.uniform(0, 0.1), "lat": FARM_LAT + 0.001},
            headers={"Authorization": STATE["auth"]},
            name="/query/fences",
        )

    @task(2)
    def batch(self) -> None:
        pts = [[FARM_LON + random.uniform(0, 0.1), FARM_LAT + random.uniform(0, 0.002)] for _ in range(500)]
        self.client.post(
            "/query/fences",
            json={"points": pts},
            headers={"Authorization": STATE["auth"]},
            name="/query/fences (500 points)",
        )

    @task(1)
    def occupancy(self) -> None:
        self.client.get("/occupancy", headers={"Authorization": STATE["auth"]}, name="/occupancy")


class DevicePublisher(User):
    """A gateway: produces fixes to Kafka with confluent-kafka, reported like an HTTP request
    (response time = produce until the broker's acknowledgement)."""

    weight = 1
    wait_time = between(0.1, 0.3)
    fixes_per_send = 50

    def __init__(self, environment) -> None:
        super().__init__(environment)
        bootstrap = os.environ.get("FENCEX_KAFKA_BOOTSTRAP")
        self.topic = os.environ.get("FENCEX_LOCATIONS_TOPIC", "locations")
        self.producer = Producer(client_config(bootstrap, **{"linger.ms": 5})) if bootstrap else None
        self.devices = [f"load-collar-{uuid.uuid4().hex[:6]}" for _ in range(20)]

    def _delivered(self, started: float, size: int):
        def report(err, _msg) -> None:
            self.environment.events.request.fire(
                request_type="KAFKA",
                name=f"produce {self.topic}",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=size,
                exception=RuntimeError(str(err)) if err else None,
                context={},
            )

        return report

    @task
    def publish(self) -> None:
        if self.producer is None:
            return
        device = random.choice(self.devices)
        now = int(time.time() * 1000)
        fixes = [
            {
                "device_id": device,
                "ts": now + i,
                "lon": FARM_LON + random.uniform(0, 0.1),
                "lat": FARM_LAT + random.uniform(0, 0.002),
            }
            for i in range(self.fixes_per_send)
        ]
        value = orjson.dumps(fixes)
        self.producer.produce(
            self.topic, value, key=device, on_delivery=self._delivered(time.perf_counter(), len(value))
        )
        deadline = time.monotonic() + 10
        while len(self.producer) and time.monotonic() < deadline:  # serve callbacks without blocking gevent
            self.producer.poll(0)
            gevent.sleep(0.005)

    def on_stop(self) -> None:
        if self.producer is not None:
            self.producer.flush(5)
