#!/usr/bin/env bash
# Install onionpost and what it needs on Debian/Ubuntu, whatever manages the
# machine's Python: Tor (Debian's package), then a virtual environment in .venv
# holding the hash-pinned versions of requirements/lock.txt and onionpost itself.
# Safe to run again. Afterwards:  .venv/bin/onionpost demo
#
#   scripts/setup.sh          the app and its tests (requirements/lock.txt)
#   scripts/setup.sh --dev    also CI's tools: deptry, build (requirements/dev-lock.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=requirements/lock.txt
case "${1:-}" in
    "") ;;
    --dev) LOCK=requirements/dev-lock.txt ;;
    *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
esac
VENV=.venv
PYTHON="${PYTHON:-python3}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_install() {
    echo "Installing $* from Debian's packages..."
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v tor >/dev/null || ! command -v tor-gencert >/dev/null; then
    apt_install tor
fi
# The lab's guard-link observer captures with tcpdump (onionpost.lab.guardlink;
# without it, or without the right to capture, it falls back to tor's events).
if ! command -v tcpdump >/dev/null && [ ! -x /usr/sbin/tcpdump ]; then
    apt_install tcpdump
fi

# PostgreSQL's server programs, for the tests and the bench of the PostgreSQL store (they start a
# throwaway cluster; a node with the default SQLite store needs none). Debian keeps initdb in
# /usr/lib/postgresql/<version>/bin, off PATH.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: onionpost needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1 || echo missing)" >&2
    exit 1
fi

# Debian's Python refuses pip installs outside a virtual environment
# ("externally-managed-environment"), and its venv module is a separate package.
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install "python3-venv"
        "$PYTHON" -m venv "$VENV"
    fi
fi

# One line per package, so the download is not ~20 s of silence.
pip_progress() {
    awk '/^Collecting /      { n++; printf "  [%2d/%d] %s\n", n, total, $2; fflush() }
         /^Installing collected/ { print "  installing..."; fflush() }
         /^(ERROR|error)/    { print; fflush() }' total="$1"
}
total=$(grep -c '==' "$LOCK")
echo "Installing $total pinned Python packages into $VENV ($LOCK)..."
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
        --require-hashes -r "$LOCK" 2>&1 | pip_progress "$total"; then
    echo "error: pip could not install $LOCK (see above)" >&2
    exit 1
fi
echo "Installing onionpost (editable) into $VENV..."
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .

# Prove the install the way a user meets it: the command must start.
if ! version=$("$VENV/bin/onionpost" --version 2>&1); then
    echo "error: the installed 'onionpost' command does not start:" >&2
    echo "$version" >&2
    exit 1
fi
echo "Ready: $(tor --version | head -n1); $version in $VENV"
echo "Next: $VENV/bin/onionpost demo     (or '. $VENV/bin/activate' and then 'onionpost demo')"
