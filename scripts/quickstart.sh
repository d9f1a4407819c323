#!/usr/bin/env bash
# The first README command: install what is missing, build, train the default model on the
# built-in corpus (no download), validate, checkpoint and print a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# --overwrite: running it again starts the quick-start run afresh (a run directory is otherwise
# never reused by a new run)
exec build/dsv3 train --preset tiny --steps 300 --eval_every 100 --out runs/quickstart --overwrite "$@"
