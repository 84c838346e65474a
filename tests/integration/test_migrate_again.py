"""``python -m fencex.store.migrate`` run again (review15c): an operator who runs it a second time (to be safe,
from a script, after a first run that looked cut short) once the services have written to the new store put
the old store's values back over everything written since (RESTORE replaces): fences, device states, generations.
It refuses a target of the tagged layout now, except one a run left cut short."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from devtools.localserver import start_redis
from fencex.errors import Misconfigured
from fencex.fence import Fence
from fencex.store.migrate import connect, main, migrate, migrated
from fencex.store.redis import RedisStore
from tests.integration.test_api import FAR
from tests.integration.test_migrate import write_old_store

pytestmark = pytest.mark.integration


async def north_version(redis_url: str, prefix: str, put: bool = False) -> int:
    store = RedisStore(redis_url, prefix)
    await store.connect()
    try:
        if put:  # the API changes the fence after the migration
            await store.put_fences([Fence(id="north", tenant="farm", geometry=FAR)])
        return (await store.get_fence("farm", "north")).version
    finally:
        await store.close()


def test_a_second_migration_does_not_undo_what_was_written_since(redis_url, tmp_path, capsys):
    prefix = f"fx{uuid.uuid4().hex[:8]}"
    with start_redis(logdir=tmp_path) as old:
        source = redis.Redis(host="127.0.0.1", port=old.port)
        write_old_store(source, prefix)
        migrate(source, connect(redis_url), prefix, "loc")
        assert asyncio.run(north_version(redis_url, prefix, put=True)) == 4
        with pytest.raises(Misconfigured, match="migrated already"):
            migrate(source, connect(redis_url), prefix, "loc")
        argv = [
            "--source",
            f"redis://127.0.0.1:{old.port}/0",
            "--target",
            redis_url,
            "--prefix",
            prefix,
            "--topic",
            "loc",
        ]
        assert main(argv) == 2
        assert "refused" in capsys.readouterr().err
        assert asyncio.run(north_version(redis_url, prefix)) == 4  # the API's write is still there
        migrate(source, connect(redis_url), prefix, "loc", force=True)  # the operator insists
        assert asyncio.run(north_version(redis_url, prefix)) == 3


def test_a_migration_refuses_a_store_the_services_wrote_and_resumes_one_cut_short(redis_url, tmp_path):
    prefix = f"fx{uuid.uuid4().hex[:8]}"
    with start_redis(logdir=tmp_path) as old:
        source = redis.Redis(host="127.0.0.1", port=old.port)
        write_old_store(source, prefix)
        dst = connect(redis_url)
        dst.set(migrated(RedisStore(redis_url, prefix).keys), "running")  # a run cut short: run it again
        migrate(source, dst, prefix, "loc")
        assert asyncio.run(north_version(redis_url, prefix)) == 3
        fresh = f"fx{uuid.uuid4().hex[:8]}"  # a store today's services started on (no migration)
        assert asyncio.run(north_version(redis_url, fresh, put=True)) == 1
        with pytest.raises(Misconfigured, match="written by fencex's services"):
            migrate(source, dst, fresh, "loc")
