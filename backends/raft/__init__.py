"""The built-in Raft backend, in three layers that import downwards only.

* :mod:`.core`: the consensus state machine, sans-I/O (no clock, sockets,
  threads, randomness or files: all injected), proven in simulation;
* :mod:`.node`: what makes it a server process: durable storage (write-ahead
  log, snapshots), the peer transport and the server runtime;
* the ``raft://`` client: the Backend that talks to a cluster of nodes.
"""
