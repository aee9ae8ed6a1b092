#!/usr/bin/env bash
# Set-up, build, then the whole test suite. Interoperability tests use .venv (scripts/setup-python.sh)
# when it exists and report "skipped" where a Python package is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" "$@"
ctest --test-dir "${LOWBIT_BUILD_DIR:-$root/build}" --output-on-failure -j "$(nproc)"
