"""The conformance kit: the backend contract as a pytest suite any backend runs.

Subclass :class:`BackendConformance` in a test module, give it a
``backend_url`` fixture (a fresh, isolated URL per test) and an
``anyio_backend`` fixture, and pytest runs every rule of the contract against
your backend (see ``docs/conformance.md``). The rule classes can also be
subclassed one by one to run a part of the kit. Needs pytest and anyio's
pytest plugin (installed with anyio).
"""

from __future__ import annotations

from .client_rules import ClientRules
from .concurrency_rules import ConcurrencyRules
from .harness import ConformanceBase, Kit
from .input_rules import InputRules
from .revision_rules import NodeFieldRules, RevisionRules
from .session_rules import SessionRules
from .suite import BackendConformance
from .tree_rules import ChildrenRules, CreateRules, DeleteRules, SetRules
from .txn_rules import TxnRules
from .watch_rules import WatchRules

__all__ = [
    "BackendConformance",
    "ChildrenRules",
    "ClientRules",
    "ConcurrencyRules",
    "ConformanceBase",
    "CreateRules",
    "DeleteRules",
    "InputRules",
    "Kit",
    "NodeFieldRules",
    "RevisionRules",
    "SessionRules",
    "SetRules",
    "TxnRules",
    "WatchRules",
]
