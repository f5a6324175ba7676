"""A Raft server process: durable storage, peer transport, the server runtime.

Built on :mod:`coordkit.backends.raft.core` (consensus) and
:mod:`coordkit.backends.store` (the replicated state machine).
"""
