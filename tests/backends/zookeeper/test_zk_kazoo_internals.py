"""The kazoo internals the ZooKeeper backend relies on are there, or it says which are not.

kazoo is pinned below 3 (pyproject's ``zookeeper`` extra); these tests fail
loudly, naming the attribute, if a kazoo release drops or changes one.
"""

from __future__ import annotations

import types

import pytest

pytest.importorskip("kazoo.client")

from kazoo.client import KazooClient

from coordkit.backends.zookeeper.bridge import missing_kazoo_internals


def test_the_installed_kazoo_has_every_internal_the_backend_uses() -> None:
    client = KazooClient(hosts="127.0.0.1:1")
    try:
        assert missing_kazoo_internals(client) == []
    finally:
        client.close()


def test_a_missing_or_changed_internal_is_named() -> None:
    client = KazooClient(hosts="127.0.0.1:1")
    try:
        connection = client._connection
        client._connection = types.SimpleNamespace(
            _read_watch_event=connection._read_watch_event,
            _read_response=lambda header, buffer: None,  # a parameter gone
            connection_stopped=connection.connection_stopped,
        )
        del client.last_zxid
        assert missing_kazoo_internals(client) == [
            "KazooClient.last_zxid",
            "ConnectionHandler._read_response(header, buffer, offset) (found (header, buffer))",
            "ConnectionHandler._socket",
        ]
    finally:
        client._connection = connection
        client.close()
