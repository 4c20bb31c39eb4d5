#!/usr/bin/env bash
# Every import is a declared dependency, in the right group (deptry; config in
# pyproject.toml). Fails on a missing (DEP001), unused (DEP002), transitive
# (DEP003) or misplaced (DEP004: a test or dev tool imported by the app) import.
#  1. the app, scripts/ and bench/: the test and dev extras count as dev-only;
#  2. tests/: any declared package may be imported (test extras included), nothing undeclared.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPTRY="${DEPTRY:-.venv/bin/deptry}"
echo "deptry: the app, scripts/ and bench/"
"$DEPTRY" .
echo "deptry: tests/"
"$DEPTRY" tests --config pyproject.toml --exclude '\.venv' --ignore DEP002,DEP004
