#!/usr/bin/env bash
# Makes .venv with the ecosystem's Python packages that the interoperability tests compare against.
# Optional for users (those tests skip without it); .ci/run always runs it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/tests/interop/requirements.txt"
