#!/usr/bin/env bash
# Refresh the hash-pinned lock files from pyproject.toml's ranges (uv, universal
# for every Python >= 3.11). Run it deliberately, run the tests, commit the diff:
#     .venv/bin/python -m pip install uv && scripts/lock.sh
# requirements/lock.txt      what scripts/setup.sh installs: the app, its tests, the lab
#                            extra (onionpost.lab, whose tests are unit tests), the postgres
#                            extra (the PostgreSQL queue store, whose tests start a throwaway cluster)
#                            and the balance extra (Onionbalance, for a balanced frontend and its tor tests)
# requirements/dev-lock.txt  the same versions, plus CI's tools (deptry, build)
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-$(command -v uv || echo .venv/bin/uv)}"
# The registry only: no local wheel folder or mirror a user would not have.
export PIP_CONFIG_FILE=/dev/null UV_NO_CONFIG=1
unset PIP_FIND_LINKS UV_FIND_LINKS UV_EXTRA_INDEX_URL 2>/dev/null || true
common=(--universal --python-version 3.11 --generate-hashes --no-header --upgrade -q)
"$UV" pip compile pyproject.toml requirements/build.in "${common[@]}" --extra test --extra lab --extra postgres --extra balance -o requirements/lock.txt
"$UV" pip compile pyproject.toml requirements/build.in "${common[@]}" --extra test --extra lab --extra postgres --extra balance --extra dev \
    --constraint requirements/lock.txt -o requirements/dev-lock.txt
echo "locked: $(grep -c '==' requirements/lock.txt) packages (app + tests + lab + postgres), $(grep -c '==' requirements/dev-lock.txt) with the dev tools"
