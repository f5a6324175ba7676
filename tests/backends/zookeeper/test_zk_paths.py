"""Path escaping: the characters ZooKeeper refuses are stored as %XX, one to one.

(What a folding ZooKeeper watch guarantees under concurrent writes is the
conformance kit's ``test_watch_keeps_order_and_real_states_when_writes_outrun_it``.)
"""

from __future__ import annotations

import anyio
import pytest

import coordkit
from coordkit.backend import BackendURL
from coordkit.backends.zookeeper.paths import decode_path, encode_path

kazoo_client = pytest.importorskip("kazoo.client")

pytestmark = pytest.mark.anyio


def test_paths_zookeeper_refuses_are_escaped_one_to_one() -> None:
    plain = "/locks/job/_c_0123__lock__0000000001"
    assert encode_path(plain) == plain  # what kazoo and zkCli see, unchanged
    for path in ["/k/\U0001f600", "/50%", "/%41", "/x\x85y", "/\ue000", "/\ufff0", "/ünï☃"]:
        assert decode_path(encode_path(path)) == path
        stored = encode_path(path)
        assert not any(
            0x80 <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xF8FF or ord(c) >= 0xFFF0 for c in stored
        ), stored
    assert encode_path("/k/\U0001f600") == "/k/%F0%9F%98%80"
    assert encode_path("/50%") == "/50%25"


async def test_an_escaped_name_is_what_kazoo_sees(zookeeper_url: str) -> None:
    async with coordkit.connect(zookeeper_url) as client:
        node = await client.create("/k/smile-\U0001f600", b"x", make_parents=True)
        assert node.path == "/k/smile-\U0001f600"
        assert await client.children("/k") == ["smile-\U0001f600"]
        parsed = BackendURL.parse(zookeeper_url)
        kz = kazoo_client.KazooClient(hosts=",".join(parsed.hosts) + parsed.path)
        await anyio.to_thread.run_sync(kz.start, 10)
        try:
            names = await anyio.to_thread.run_sync(kz.get_children, "/k")
            assert names == ["smile-%F0%9F%98%80"]
        finally:
            await anyio.to_thread.run_sync(kz.stop)
            await anyio.to_thread.run_sync(kz.close)
