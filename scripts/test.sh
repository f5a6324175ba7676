#!/usr/bin/env bash
# The whole test suite from a fresh clone: system packages for the real etcd and
# ZooKeeper servers, a venv with every extra and the example plugins, lint,
# type checks, then pytest on asyncio and trio. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in etcd-server etcd-client zookeeper; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "== installing system packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$python" -m venv .venv
fi
echo "== installing coordkit[all,dev,bench] and the example plugin packages"
plugins=()
for project in examples/*/pyproject.toml; do
    plugins+=(-e "$(dirname "$project")")
done
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[all,dev,bench]' "${plugins[@]}"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict (coordkit, backends, recipes)"
.venv/bin/mypy
echo "== pytest (asyncio and trio)"
exec .venv/bin/python -m pytest -q "$@"
