#!/usr/bin/env bash
# Installs the Debian packages lowbit builds with. Idempotent; prints nothing when all are there.
#   scripts/setup.sh          build + test dependencies
# The CUDA toolkit is not a Debian package here: lowbit::cuda is built when nvcc is found (LOWBIT_CUDA=AUTO).
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev libsentencepiece-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev   # the libFuzzer target and the sanitizer build in .ci/run
  python3 python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3/python3-venv may come from elsewhere (pyenv): a working `python3 -m venv` is enough.
if printf '%s\n' "${missing[@]}" | grep -qx python3-venv && python3 -m venv --help >/dev/null 2>&1; then
  missing=("${missing[@]/python3-venv}")
fi
if printf '%s\n' "${missing[@]}" | grep -qx python3 && command -v python3 >/dev/null 2>&1; then
  missing=("${missing[@]/python3}")
fi
read -r -a missing <<< "${missing[*]}"
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "setup.sh: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
