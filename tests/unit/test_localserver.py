from __future__ import annotations

import socket

import pytest

from devtools.localserver import free_port, start_redis
from fencex.errors import BrokerUnavailable, ServerStartError
from fencex.kafka.admin import check_broker


def test_port_taken_gives_clear_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"port {port} for redis is already taken"):
            start_redis(port)


def test_broker_that_does_not_answer():
    with pytest.raises(BrokerUnavailable, match="does not answer"):
        check_broker(f"127.0.0.1:{free_port()}", timeout=1.0)
