"""The baseline a user would pick instead: the same point-in-fence lookups through PostGIS.

A private PostgreSQL 15 + PostGIS 3 cluster (Debian's postgresql-15-postgis-3, installed by
``./dev evaluate --with-postgis`` where missing) on a free loopback port, the same seeded
fences with a GiST index, then one-point lookups from several client processes and batched
lookups of 1,000 points a statement. Used by bench.evaluate; runnable alone.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from devtools.localserver import free_port
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON, pastures

POINT_SQL = "SELECT id FROM fences WHERE tenant = %s AND ST_Intersects(geom, ST_SetSRID(ST_MakePoint(%s, %s), 4326))"
BATCH_SQL = (
    "SELECT p.i, f.id FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS p(x, y, i) "
    "JOIN fences f ON f.tenant = %s AND ST_Intersects(f.geom, ST_SetSRID(ST_MakePoint(p.x, p.y), 4326))"
)


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or not glob.glob("/usr/share/postgresql/*/extension/postgis.control"):
        return None
    return Path(found[-1]).parent


def install(allowed: bool = True) -> bool:
    """Whether PostGIS is here; installs it first when ``allowed`` and we may (root, apt-get)."""
    if bindir() is not None:
        return True
    if not allowed or os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print("postgis: installing Debian's postgresql-15-postgis-3", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql-15-postgis-3"],
        check=False,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    subprocess.run(["pg_ctlcluster", "15", "main", "stop"], check=False, stderr=subprocess.DEVNULL)
    return bindir() is not None


class Cluster:
    """initdb + pg_ctl in a temporary folder, as the postgres user (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.bin = bindir()
        assert self.bin is not None, "PostGIS is not installed"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fencex-pg-"))
        self.data = self.dir / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user, self.user)

    def _run(self, *argv: str) -> None:
        cmd = (["runuser", "-u", self.user, "--"] if self.user else []) + list(argv)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB "
            "-c max_connections=50 -c fsync=off",
            "start",
        )
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def load(dsn: str, n: int, seed: int) -> None:
    import psycopg

    fences = pastures(n, seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute("CREATE TABLE fences (id text PRIMARY KEY, tenant text NOT NULL, geom geometry(Geometry, 4326))")
        with conn.cursor().copy("COPY fences (id, tenant, geom) FROM STDIN") as copy:
            for f in fences:
                copy.write_row((f.id, f.tenant, f"SRID=4326;{shapely.to_wkt(f.shape())}"))
        conn.execute("CREATE INDEX fences_geom ON fences USING gist (geom)")
        conn.execute("ANALYZE fences")


def _points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        (ORIGIN_LON + rng.uniform(0, 10 * CELL_LON, n), ORIGIN_LAT + rng.uniform(0, 10 * CELL_LAT, n))
    )


def _client(dsn: str, seconds: float, seed: int, out: mp.Queue) -> None:
    import psycopg

    pts = _points(100_000, seed).tolist()
    done = 0
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        cur = conn.cursor()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            x, y = pts[done % len(pts)]
            cur.execute(POINT_SQL, ("farm-000", x, y))
            cur.fetchall()
            done += 1
    out.put(done)


def point_lookups(dsn: str, clients: int, seconds: float) -> float:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(dsn, seconds, i, q)) for i in range(clients)]
    started = time.monotonic()
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / max(time.monotonic() - started, seconds)


def batch_lookups(dsn: str, points: int, per_statement: int = 1000) -> tuple[float, int]:
    import psycopg

    pts = _points(points, 7)
    matches = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        started = time.perf_counter()
        for k in range(0, points, per_statement):
            chunk = pts[k : k + per_statement]
            cur.execute(BATCH_SQL, (chunk[:, 0].tolist(), chunk[:, 1].tolist(), "farm-000"))
            matches += len(cur.fetchall())
        return points / (time.perf_counter() - started), matches


def run(fences: int, seed: int, seconds: float, batch_points: int) -> dict:
    cluster = Cluster()
    try:
        dsn = cluster.start()
        load(dsn, fences, seed)
        out = {
            "fences": fences,
            "version": subprocess.run(
                [str(cluster.bin / "postgres"), "--version"], capture_output=True, text=True
            ).stdout.strip(),
        }
        for clients in (1, 4):
            out[f"point_per_s_{clients}_clients"] = point_lookups(dsn, clients, seconds)
            print(
                f"postgis: {out[f'point_per_s_{clients}_clients']:,.0f} one-point lookups/s from {clients} client(s)",
                flush=True,
            )
        out["batch_points_per_s"], out["batch_matches"] = batch_lookups(dsn, batch_points)
        print(f"postgis: {out['batch_points_per_s']:,.0f} points/s batched 1,000 a statement", flush=True)
        return out
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.postgis", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch-points", type=int, default=100_000)
    a = ap.parse_args()
    if not install():
        print("postgis: not installed (apt-get install postgresql-15-postgis-3)", file=sys.stderr)
        return 2
    print(run(a.fences, 1, a.seconds, a.batch_points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
