"""The whole conformance kit as one class to subclass."""

from __future__ import annotations

from .client_rules import ClientRules
from .concurrency_rules import ConcurrencyRules
from .input_rules import InputRules
from .revision_rules import NodeFieldRules, RevisionRules
from .session_rules import SessionRules
from .tree_rules import ChildrenRules, CreateRules, DeleteRules, SetRules
from .txn_rules import TxnRules
from .watch_rules import WatchRules

__all__ = ["BackendConformance"]


class BackendConformance(
    InputRules,
    RevisionRules,
    NodeFieldRules,
    CreateRules,
    SetRules,
    DeleteRules,
    ChildrenRules,
    SessionRules,
    WatchRules,
    TxnRules,
    ConcurrencyRules,
    ClientRules,
):
    """Every rule of the backend contract, one ``test_*`` per rule.

    Subclass it in a test module under a ``Test`` name and give it a
    ``backend_url`` fixture returning a fresh, isolated URL for each test; an
    ``anyio_backend`` fixture must be visible too (the kit's tests are anyio
    tests). Optionally override the ``connect_options`` fixture, the tuning
    class attributes (``short_session_ttl``, ``wait_timeout``,
    ``contention_tasks``, ...) and :meth:`compact`::

        from coordkit.testing import BackendConformance

        class TestMyBackend(BackendConformance):
            @pytest.fixture
            def backend_url(self) -> str:
                return "mine://127.0.0.1:9000/" + uuid.uuid4().hex

    A test whose rule needs a capability the backend does not declare skips,
    naming the capability.
    """
