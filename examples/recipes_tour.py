"""A tour of Queue, Election, ConfigWatch and Group, each with its failure case.

Run: python examples/recipes_tour.py [URL]   (default: COORDKIT_URL, else the embedded default)

Every recipe object gets its own client here, as separate processes would
have: one client is one session. The failure cases expire a session on
demand (``client.expire_session()``, a fault-injection call the backends
with the ``expire_session`` capability offer), which is what the servers do
to a client that stays cut off for longer than its TTL.

On a real server use a URL with a fresh prefix or chroot
(``etcd://127.0.0.1:2379/tour``): the tour refuses to touch paths that
already exist, and removes what it created when it ends.
"""

from __future__ import annotations

import sys
from contextlib import aclosing

import anyio

import coordkit
from coordkit.recipes import ConfigWatch, Election, Group, Queue

PATHS = ["/jobs", "/election", "/config", "/groups"]


async def queue_tour(url: str | None) -> None:
    print("== Queue")
    async with coordkit.connect(url) as producer, coordkit.connect(url) as consumer:
        jobs = Queue(producer, "/jobs/thumbnails")
        await jobs.put(b"resize a.png")
        await jobs.put(b"resize b.png")
        await jobs.put(b"resize logo.png", priority=-10)  # lower numbers are taken first

        worker = Queue(consumer, "/jobs/thumbnails")
        print("waiting:", await worker.size())
        for _ in range(3):
            print("got:", (await worker.get()).decode())
        try:
            await worker.get(timeout=0.2)
        except TimeoutError:
            print("empty: get(timeout=0.2) raised TimeoutError")

    # Ack mode: an item whose consumer's session ends before ack() comes back.
    async with (
        coordkit.connect(url, session_ttl=2.0) as crashing,
        coordkit.connect(url) as survivor,
    ):
        if coordkit.Capability.EXPIRE_SESSION not in crashing.capabilities:
            print("(skipped redelivery: the backend cannot expire a session on demand)")
            return
        await Queue(survivor, "/jobs/emails", ack=True).put(b"mail #1")
        item = await Queue(crashing, "/jobs/emails", ack=True).get()
        print(f"taken with ack=True: {item.value.decode()} (priority {item.priority})")
        others = Queue(survivor, "/jobs/emails", ack=True)
        print("waiting while claimed:", await others.size())

        await crashing.expire_session()  # the consumer "dies" before it acks
        again = await others.get(timeout=10)
        print(f"redelivered to another consumer: {again.value.decode()}")
        await again.ack()
        try:
            await item.ack()
        except coordkit.LockLostError:
            print(f"the first consumer's late ack raised LockLostError (lost={item.lost})")
        print("waiting after ack:", await others.size())


async def election_tour(url: str | None) -> None:
    print("== Election")
    async with (
        coordkit.connect(url) as a,
        coordkit.connect(url) as b,
        coordkit.connect(url) as watcher,
    ):
        path = "/election/scheduler"
        first, second = Election(a, path, "node-a"), Election(b, path, "node-b")
        observer = Election(watcher, path, "observer")  # never campaigns
        async with aclosing(observer.observe()) as leaders:
            print("observe:", await anext(leaders))  # None: nobody campaigns yet

            await first.campaign()
            print("observe:", await anext(leaders))
            print(f"node-a leads: is_leader={first.is_leader}, token={first.token}")
            old_token = first.token
            await first.resign()  # nobody else waits: no leader
            print("observe after resign:", await anext(leaders))

            if coordkit.Capability.EXPIRE_SESSION not in a.capabilities:
                print("(skipped failover: the backend cannot expire a session on demand)")
                return
            body: list[str] = []
            async with anyio.create_task_group() as tg:

                async def lead() -> None:
                    try:
                        async with first:  # campaign; resign on the way out
                            body.append("started")
                            await anyio.sleep_forever()  # the leader's work
                    except coordkit.LockLostError:
                        body.append("cancelled, LockLostError raised")

                async def follow() -> None:
                    await second.campaign()  # returns once node-b leads

                tg.start_soon(lead)
                print("observe:", await anext(leaders))
                tg.start_soon(follow)
                await anyio.sleep(0.3)  # time for node-b to get in line behind node-a
                await a.expire_session()  # node-a's session ends, as after a partition
                # None comes first if node-b was not in line yet when node-a went.
                after = [await anext(leaders)]
                while after[-1] != "node-b":
                    after.append(await anext(leaders))
                print("observe after node-a's session expired:", " -> ".join(map(str, after)))
            print("node-a's body:", " -> ".join(body))
            print(f"node-b leads with a larger token: {second.token > old_token}")
            await second.resign()


async def config_tour(url: str | None) -> None:
    print("== ConfigWatch")
    async with coordkit.connect(url) as admin, coordkit.connect(url) as app:
        config = ConfigWatch(app, "/config/app")  # values are JSON (orjson) by default
        print("missing:", await config.get())
        await ConfigWatch(admin, "/config/app").update(lambda old: {"workers": 4})

        async with config.changes() as values:
            print("first value:", await anext(values))

            async def bump(client: coordkit.Client) -> None:
                cw = ConfigWatch(client, "/config/app")
                for _ in range(5):  # a compare-and-set loop: no increment is lost
                    await cw.update(lambda old: {"workers": old["workers"] + 1})

            seen = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(bump, admin)
                tg.start_soon(bump, app)
                async for value in values:
                    seen.append(value["workers"])
                    if value["workers"] == 14:
                        break
            print(f"10 concurrent updates; the watcher saw {len(seen)} values, ", end="")
            print(f"in order: {seen == sorted(set(seen))}, last: {seen[-1]}")

        await admin.create("/config/svc/db/host", b'"db1"', make_parents=True)
        await admin.create("/config/svc/db/port", b"5432")
        tree = ConfigWatch(app, "/config/svc", recursive=True)
        print("subtree:", await tree.get())
        await tree.update(lambda port: port + 1, key="db/port")
        print("after update(key='db/port'):", await tree.get())
        raw = ConfigWatch(app, "/config/svc/db/host", decoder=bytes.decode)
        print("with decoder=bytes.decode:", repr(await raw.get()))


async def group_tour(url: str | None) -> None:
    print("== Group")
    async with (
        coordkit.connect(url) as a,
        coordkit.connect(url, session_ttl=2.0) as b,
        coordkit.connect(url) as watcher,
    ):
        path = "/groups/workers"
        async with Group(watcher, path, "watcher").watch() as snapshots:
            print("members:", sorted(await anext(snapshots)))
            web1 = Group(a, path, "web-1", b"10.0.0.1:8080")
            web2 = Group(b, path, "web-2", b"10.0.0.2:8080")
            await web1.join()
            print("members:", sorted(await anext(snapshots)))
            await web2.join()
            print("members:", sorted(await anext(snapshots)))
            print("data:", await web1.members())

            if coordkit.Capability.EXPIRE_SESSION in b.capabilities:
                await b.expire_session()
                print("after web-2's session expired:", sorted(await anext(snapshots)))
                print(f"web-2 joined={web2.joined}; joining again under its new session")
                await web2.join()
                print("members:", sorted(await anext(snapshots)))
            await web1.leave()
            print("after web-1 left:", sorted(await anext(snapshots)))
            await web2.leave()


async def main(url: str | None) -> None:
    async with coordkit.connect(url) as client:
        print(f"connected to {client.url}")
        taken = [p for p in PATHS if await client.exists(p)]
        if taken:
            sys.exit(f"{', '.join(taken)} already exist: use a URL with a fresh prefix or chroot")
        try:
            with anyio.fail_after(60):
                await queue_tour(url)
                await election_tour(url)
                await config_tour(url)
                await group_tour(url)
        finally:
            with anyio.CancelScope(shield=True):
                for path in PATHS:
                    if await client.exists(path):
                        await client.delete(path, recursive=True)
    print("done")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
