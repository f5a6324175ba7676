"""Where each member of the cluster listens: the address book.

The Raft configuration names members; this maps names to addresses. It
starts from ``--peers``, learns each added member's address from its
configuration-change entry (the address is the entry's context), forgets
removed members, and is saved in the data directory (written atomically) so
a restarted node knows where its peers are even if it was added later.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from .config import Address, parse_address

__all__ = ["AddressBook"]

log = logging.getLogger(__name__)

FILE = "members.json"


class AddressBook:
    def __init__(self, initial: Mapping[str, Address]) -> None:
        self._addresses: dict[str, Address] = dict(initial)
        self._given = frozenset(initial)

    def get(self, name: str) -> Address | None:
        return self._addresses.get(name)

    def set(self, name: str, address: Address) -> None:
        self._addresses[name] = address

    def remove(self, name: str) -> None:
        self._addresses.pop(name, None)

    def all(self) -> dict[str, Address]:
        return dict(self._addresses)

    def peers_of(self, name: str) -> dict[str, Address]:
        return {n: a for n, a in sorted(self._addresses.items()) if n != name}

    def load(self, data_dir: Path) -> None:
        """Add what the log taught us before a restart: members that ``--peers`` does not name.

        ``--peers`` wins for the members it names (the operator's word is newer).
        Blocking (a small file read once at start, before the node serves).
        """
        path = data_dir / FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        for name, text in saved.items():
            if name in self._given:
                continue
            try:
                self._addresses[name] = parse_address(text)
            except ValueError as exc:
                log.warning("ignoring member %r in %s: %s", name, path, exc)

    def save(self, data_dir: Path) -> None:
        """Write the book atomically (temp file, fsync, rename). Blocking: run it in a thread."""
        path = data_dir / FILE
        temp = path.with_suffix(".tmp")
        text = json.dumps({n: str(a) for n, a in sorted(self._addresses.items())})
        with temp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
