"""Operator requests to a Raft cluster, used by ``coordkit member`` and ``coordkit snapshot``."""

from __future__ import annotations

import os
from pathlib import Path

import aiofiles
import aiofiles.os

import coordkit
from coordkit.errors import ConfigurationError

from .client import RaftBackend
from .node.config import parse_address
from .protocol import Op

_fsync = aiofiles.os.wrap(os.fsync)

__all__ = ["member_add", "member_remove", "snapshot_save"]


def _raft(client: coordkit.Client) -> RaftBackend:
    backend = client.backend
    if not isinstance(backend, RaftBackend):
        raise ConfigurationError(
            f"{client.url} is not a Raft cluster: give --url raft://host:port,..."
        )
    return backend


async def member_add(url: str | None, name: str, address: str) -> int:
    parse_address(address, what="member address")
    async with coordkit.connect(url) as client:
        reply = await _raft(client).admin({"op": Op.MEMBER_ADD, "name": name, "addr": address})
    print(
        f"{name} added as a learner at {address} (log index {reply.header.get('index')}); "
        f"start it with: coordkit serve --name {name} --listen {address} --join "
        "--data-dir DIR --peers <every member, this one included>"
    )
    return 0


async def member_remove(url: str | None, name: str) -> int:
    async with coordkit.connect(url) as client:
        reply = await _raft(client).admin({"op": Op.MEMBER_REMOVE, "name": name})
    print(f"{name} removed (log index {reply.header.get('index')})")
    return 0


async def snapshot_save(url: str | None, file: Path) -> int:
    """Stream a consistent snapshot of the leader's store into ``file`` (atomically)."""
    temp = file.with_name(file.name + ".partial")
    size = 0
    async with coordkit.connect(url) as client:
        backend = _raft(client)
        async with aiofiles.open(temp, "wb") as out:
            async for chunk in backend.download_snapshot():
                await out.write(chunk)
                size += len(chunk)
            await out.flush()
            await _fsync(out.fileno())
    await aiofiles.os.replace(temp, file)
    print(f"snapshot written to {file} ({size} bytes)")
    return 0
