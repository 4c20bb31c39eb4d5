#!/usr/bin/env bash
# Install onionpost and what it needs on Debian/Ubuntu: Tor (from Debian's
# packages) and the Python packages (from PyPI). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v tor >/dev/null || ! command -v tor-gencert >/dev/null; then
    echo "Installing tor from Debian's packages..."
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tor >/dev/null
fi

echo "Installing onionpost and its Python dependencies..."
python3 -m pip install -q -e '.[test]'
echo "Ready: $(tor --version | head -n1); onionpost $(python3 -c 'import importlib.metadata as m; print(m.version("onionpost"))')"
