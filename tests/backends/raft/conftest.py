"""The Raft simulator's checkers (``sim``) are importable from every Raft test (importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

_CORE = str(Path(__file__).resolve().parent / "core")
if _CORE not in sys.path:
    sys.path.insert(0, _CORE)
