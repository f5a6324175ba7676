"""connect(): URL parsing, scheme lookup through plugins, options."""

from __future__ import annotations

import uuid

import pytest

import coordkit
from coordkit.backend import BackendURL
from coordkit.errors import ConfigurationError


@pytest.mark.parametrize("url", ["memory", "127.0.0.1:2379", "://x", ""])
def test_malformed_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed backend URL"):
        coordkit.connect(url)


def test_unknown_scheme_lists_installed_schemes() -> None:
    with pytest.raises(ConfigurationError) as info:
        coordkit.connect("nosuch://h:1")
    message = str(info.value)
    assert "'nosuch'" in message
    assert "memory" in message and "example" in message


def test_url_parsing_of_hosts_path_and_query() -> None:
    url = BackendURL.parse("etcd://a:1,b:2,[::1]:3/chroot?session_ttl=4")
    assert url.scheme == "etcd"
    assert url.host_ports(2379) == [("a", 1), ("b", 2), ("::1", 3)]
    assert url.path == "/chroot"
    assert url.query == {"session_ttl": "4"}
    assert BackendURL.parse("zookeeper://h").host_ports(2181) == [("h", 2181)]
    with pytest.raises(ConfigurationError, match="bad host:port"):
        BackendURL.parse("etcd://h:notaport").host_ports(1)


def test_options_come_from_arguments_then_query() -> None:
    client = coordkit.connect("memory://opts?session_ttl=3&timeout=7")
    assert (client.options.session_ttl, client.options.timeout) == (3.0, 7.0)
    client = coordkit.connect("memory://opts?session_ttl=3", session_ttl=5)
    assert client.options.session_ttl == 5.0
    with pytest.raises(ConfigurationError, match="session_ttl must be"):
        coordkit.connect("memory://opts?session_ttl=soon")
    with pytest.raises(ConfigurationError, match="must be > 0"):
        coordkit.connect("memory://", timeout=0)


@pytest.mark.anyio
async def test_third_party_backend_plugin_connects_by_url() -> None:
    name = f"plugin-{uuid.uuid4().hex}"
    # examples/backend-plugin is installed by the test command; it registers
    # `example://` through an entry point exactly as coordkit's own backends do.
    async with coordkit.connect(f"example://{name}") as client:
        assert type(client.backend).__module__ == "coordkit_example_backend"
        await client.create("/hello", b"world")
        node = await client.get("/hello")
        assert node is not None and node.value == b"world"
    # a separate namespace from memory:// of the same name
    async with coordkit.connect(f"memory://{name}") as client:
        assert await client.get("/hello") is None


@pytest.mark.anyio
async def test_client_used_outside_async_with_raises() -> None:
    client = coordkit.connect("memory://closed")
    with pytest.raises(coordkit.ClientClosedError):
        await client.get("/")
