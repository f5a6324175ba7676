"""Configuration resolution: argument, COORDKIT_URL, pyproject.toml, coordkit.toml, default."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordkit.config import DEFAULT_URL, resolve_url
from coordkit.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORDKIT_URL", raising=False)


def test_default_is_the_embedded_raft_cluster(tmp_path: Path) -> None:
    assert resolve_url(cwd=tmp_path) == DEFAULT_URL == "raft+embedded://?nodes=3"


def test_argument_wins_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDKIT_URL", "memory://env")
    (tmp_path / "coordkit.toml").write_text('url = "memory://file"\n')
    assert resolve_url("memory://arg", cwd=tmp_path) == "memory://arg"


def test_environment_wins_over_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDKIT_URL", "memory://env")
    (tmp_path / "coordkit.toml").write_text('url = "memory://file"\n')
    assert resolve_url(cwd=tmp_path) == "memory://env"


def test_pyproject_wins_over_coordkit_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.coordkit]\nurl = "memory://pyproject"\n')
    (tmp_path / "coordkit.toml").write_text('url = "memory://file"\n')
    assert resolve_url(cwd=tmp_path) == "memory://pyproject"


def test_pyproject_without_section_falls_through(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (tmp_path / "coordkit.toml").write_text('url = "memory://file"\n')
    assert resolve_url(cwd=tmp_path) == "memory://file"


def test_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "coordkit.toml").write_text("url = [unterminated\n")
    with pytest.raises(ConfigurationError, match=r"coordkit\.toml"):
        resolve_url(cwd=tmp_path)


def test_non_string_url_in_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "coordkit.toml").write_text("url = 3\n")
    with pytest.raises(ConfigurationError, match="must be a string"):
        resolve_url(cwd=tmp_path)
