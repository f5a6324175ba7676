"""Quickstart: nodes, a watch, a transaction, sessions and their states on the default backend.

Run: python examples/quickstart.py   (uses COORDKIT_URL if set, else the embedded default)
"""

from __future__ import annotations

import anyio

import coordkit
from coordkit import Compare, CreateOp, SetOp


async def main() -> None:
    async with coordkit.connect() as client, coordkit.connect() as other:
        print(f"connected to {client.url} (session {client.session.id})")
        # Session state changes (SUSPENDED, RESTORED, LOST, a new CONNECTED) on every backend.
        states: list[str] = []
        client.add_session_listener(lambda change: states.append(change.state.name))
        await client.ensure_path("/app")
        await client.create("/app/config", b'{"workers": 4}')

        # A watch is in place as soon as the `async with` body starts.
        async with other.watch("/app", recursive=True) as events:
            node = await client.set("/app/config", b'{"workers": 8}', version=0)
            member = await client.create("/app/member-", b"a", ephemeral=True, sequential=True)
            result = await client.txn(
                compares=[Compare.version("/app/config", "==", node.version)],
                success=[SetOp("/app/config", b'{"workers": 16}'), CreateOp("/app/done")],
                failure=[],
            )
            print(f"transaction succeeded={result.succeeded} at revision {result.revision}")
            seen = 0
            async for event in events:
                print(f"  rev {event.revision}: {event.type.value:8} {event.path}")
                seen += 1
                if seen == 4:  # set, create member, txn set + create
                    break

        print("children:", await other.children("/app"))
        await client.aclose()  # closing ends the session: the ephemeral member goes at once
        print(f"{member.path} after close:", await other.get(member.path))
        print("session states seen:", states)


if __name__ == "__main__":
    anyio.run(main)
