"""Deterministic simulation of a Raft cluster built from RaftCore instances.

Reusable by any test: ``from sim.cluster import Cluster`` (the conftest one
level up puts this directory's parent on ``sys.path``).
"""
