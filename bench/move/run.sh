#!/usr/bin/env bash
# bench/move/run.sh - online account moves between two havend stores on one
# machine; prints move throughput against the disk's sequential bandwidth
# and the freeze time, with PASS/MISS (docs/bench-move.md).
#
#   MOVE_BENCH_BYTES=N     size of the big account (default 256 MiB)
#   MOVE_BENCH_180K=1      also move a 180,000-message folder
#   MOVE_BENCH_DIR=folder  where to work (default build/bench-tmp/move; on a disk)
#   STRICT=1               exit 1 when a goal is missed
set -eu
cd "$(dirname "$0")/../.."
make -s bin/haven bin/havend
export HAVEN_BIN_DIR=${HAVEN_BIN_DIR:-$PWD/bin}
exec python3 bench/move/move_bench.py
