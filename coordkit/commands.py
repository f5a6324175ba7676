"""Subcommands that plugins add to the ``coordkit`` command line.

A plugin returns them from the ``coordkit_commands`` hook; ``coordkit --help``
lists them beside the built-in ones. The Raft backend's ``serve``,
``cluster``, ``member`` and ``snapshot`` come this way, since the core never
imports a backend.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CliCommand"]


@dataclass(frozen=True)
class CliCommand:
    """One subcommand: ``configure`` adds its arguments, ``run`` returns the exit status.

    ``run`` is synchronous and owns its event loop. It raises
    :class:`~coordkit.CoordkitError` for a failure the CLI reports in one line
    (``coordkit: error: ...``); it never prints a traceback for a user's mistake.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    #: the log level without -v/--log-level (a server logs its state changes: INFO).
    default_log_level: int = logging.WARNING
