#!/usr/bin/env bash
# Regenerate requirements.lock: the exact set of versions the tests pass with, which scripts/setup.sh
# installs everywhere (a fresh machine gets what CI passed with, whatever was released since).
#
#   bash scripts/lock.sh             re-resolve within the current lock (after a dependency was added
#                                    to pyproject.toml: only what is new gets a version)
#   bash scripts/lock.sh --upgrade   resolve every dependency anew (the newest releases that fit
#                                    pyproject.toml and constraints.txt), then run bash scripts/test.sh
#                                    and commit the lock only if the tests pass
#
# Resolved by pip in a throwaway virtualenv with the test extras (a superset of every other install),
# written with `pip freeze`: every distribution, pinned, with the Python version in the header.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
upgrade=0
[ "${1:-}" = "--upgrade" ] && upgrade=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
pip="$tmp/venv/bin/python -m pip"
$pip install -q --upgrade pip
locks=(-c constraints.txt)
if [ "$upgrade" = 0 ] && [ -f requirements.lock ]; then
  # keep every locked version that still fits; a new dependency gets the newest that fits
  grep -v '^#' requirements.lock | grep . > "$tmp/old.lock" || true
  locks+=(-c "$tmp/old.lock")
fi
$pip install -q "${locks[@]}" torch
$pip install -q "${locks[@]}" ".[test]"
{
  echo "# The resolved set the tests pass with; scripts/setup.sh installs it (pip install -c requirements.lock)."
  echo "# Regenerate: bash scripts/lock.sh (--upgrade: newest releases), then bash scripts/test.sh."
  echo "# Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d)"
  $pip freeze --exclude-editable | grep -v '^sgpo @\|^-e ' | LC_ALL=C sort -f
} > requirements.lock
echo "[lock] requirements.lock: $(grep -vc '^#' requirements.lock) pinned distributions"
