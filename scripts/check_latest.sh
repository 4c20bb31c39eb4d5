#!/usr/bin/env bash
# CI's look ahead, and the proof that a built wheel works on its own:
#  1. build the wheel and install it into an empty virtual environment with the
#     NEWEST releases pyproject.toml allows (not the lock), pip's cache off;
#  2. from a folder without the repository, run 'onionpost --version/--help',
#     'node init' and 'profile create' (a missing dependency, package or data
#     file such as the torrc templates fails here, as it would for a user);
#  3. the unit tests against that install (the test, lab, postgres and balance extras:
#     onionpost.lab and the Onionbalance testnet timing have unit tests), and one
#     loopback conversation
#     (scripts/smoke.py) through the installed command.
# Upstream breakage shows here before a user meets it; then refresh the lock
# (scripts/lock.sh) deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== building the wheel"
.venv/bin/python -m build --wheel --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
wheel=$(ls "$WORK"/dist/onionpost-*.whl)
echo "   $(basename "$wheel")"

echo "== installing it with the newest allowed releases into an empty venv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade "$wheel[test,lab,postgres,balance]"
normalize() { tr 'A-Z_' 'a-z-'; }
locked=$(grep -oE '^[A-Za-z0-9_.-]+==[^ ;]+' requirements/lock.txt | normalize)
newer=$("$WORK/venv/bin/python" -m pip freeze --exclude onionpost | normalize | while IFS= read -r pin; do
    grep -qx "$pin" <<<"$locked" || echo -n "$pin "
done)
echo "   differs from requirements/lock.txt: ${newer:-nothing}"

echo "== the installed command, outside the repository"
mkdir "$WORK/user" && cd "$WORK/user"
export ONIONPOST_PASSWORD="check latest"
"$WORK/venv/bin/onionpost" --version
"$WORK/venv/bin/onionpost" --help >/dev/null
"$WORK/venv/bin/onionpost" node init --data node >/dev/null
"$WORK/venv/bin/onionpost" node init --data onion-node --onion >/dev/null
"$WORK/venv/bin/onionpost" --home home profile create checker >/dev/null
"$WORK/venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
tops = {name.split("/")[0] for name in zipfile.ZipFile(sys.argv[1]).namelist()}
strays = {top for top in tops if top != "onionpost" and not top.endswith(".dist-info")}
if strays:
    sys.exit(f"the wheel puts more than 'onionpost' at the top of site-packages: {sorted(strays)}")
from importlib import resources
assert resources.files("onionpost.torconfig").joinpath("templates").is_dir(), "torrc templates missing from the wheel"
print("   node init, profile create: ok; only 'onionpost' at the top of site-packages")
PY

echo "== unit tests against the installed wheel"
mkdir "$WORK/src"
cp -r "$REPO/tests" "$REPO/docs" "$REPO/scripts" "$REPO/bench" "$REPO/requirements" "$REPO/.ci" \
      "$REPO/README.md" "$REPO/pyproject.toml" "$WORK/src/"
cd "$WORK/src"
"$WORK/venv/bin/python" -m pytest tests/unit -q -p no:cacheprovider -x | tail -n 3

echo "== one loopback conversation through the installed command"
"$WORK/venv/bin/python" scripts/smoke.py --onionpost "$WORK/venv/bin/onionpost"
