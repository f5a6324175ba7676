"""A sequential model of the store operations the simulated clients use, per key.

The linearizability checker (``linearizability.py``) asks this model, for one
key, whether an operation with its recorded outcome is possible in a state,
and what the state becomes. Keys are independent (each operation touches one
path), so a key's history is checked on its own.

Two kinds of key:

* a **register** (a node path): its state is the node's value, or None while
  the node does not exist. Operations: ``get`` (result: the value or None),
  ``put`` (the store's ``Set``: "ok", or "nonode" if the node is missing),
  ``cas`` (arg ``(expected, new)``, a transaction comparing the value: "ok"
  or "fail"; a missing node fails the compare), ``create`` (arg the value:
  "ok", or "exists") and ``delete`` ("ok", or "nonode").
* a **sequence** (the parent of sequential creates): its state is the parent's
  next sequence number. ``seq`` (result: the number the created node got)
  takes the current number and increments it.

Every kind also accepts the result "refused": the store answered without
applying the command (e.g. its session had expired), so the operation had no
effect. An operation whose outcome is unknown (``returned`` False: the client
timed out or gave up) may take effect, with whichever result, or not at all.
"""

from __future__ import annotations

__all__ = [
    "CAS",
    "CREATE",
    "DELETE",
    "GET",
    "KINDS",
    "PUT",
    "REFUSED",
    "SEQ",
    "State",
    "initial_state",
    "step",
]

GET, PUT, CAS, CREATE, DELETE, SEQ = "get", "put", "cas", "create", "delete", "seq"
KINDS = (GET, PUT, CAS, CREATE, DELETE, SEQ)
#: the command was answered without being applied: no effect.
REFUSED = "refused"

State = str | int | None


def initial_state(kind: str) -> State:
    """The state of a key before any operation: a missing node, or sequence 0."""
    return 0 if kind == SEQ else None


def step(
    state: State, kind: str, arg: object, result: object, returned: bool
) -> tuple[bool, State]:
    """Apply one operation to ``state``: (whether its recorded result is possible, new state).

    For an operation that never returned, every outcome is possible and the
    state changes as the store would have changed it.
    """
    if returned and result == REFUSED:
        return True, state
    if kind == GET:
        return result == state, state
    if kind == SEQ:
        assert isinstance(state, int), f"seq on a register key (state {state!r})"
        return (not returned or result == state), state + 1
    if kind == PUT:
        ok, new = state is not None, arg
    elif kind == CAS:
        expected, new = arg  # type: ignore[misc]
        ok = state is not None and state == expected
    elif kind == CREATE:
        ok, new = state is None, arg
    elif kind == DELETE:
        ok, new = state is not None, None
    else:
        raise ValueError(f"unknown operation kind {kind!r}")
    after: State = new if ok else state  # type: ignore[assignment]
    if not returned:
        return True, after
    if ok:
        return result == "ok", after
    return result == _FAILURE[kind], after


#: What each kind returns when its precondition does not hold.
_FAILURE = {PUT: "nonode", CAS: "fail", CREATE: "exists", DELETE: "nonode"}
