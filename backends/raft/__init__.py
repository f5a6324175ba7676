"""The built-in Raft backend."""
