#!/usr/bin/env bash
# bench/store/run.sh - every account-store benchmark, then a summary table
# with each goal and PASS/MISS. docs/bench-store.md says what each measures.
#
#   bench/store/run.sh            full run (about 1.5 minutes with cleanup)
#   QUICK=1 bench/store/run.sh    shorter timed phases, same data sizes (about a minute)
#   KEEP=1                        keep the work folder; the next run reuses
#                                 the big mailbox and the 1 GB account
#   STRICT=1                      exit 1 when a goal is missed
#   STORE_BENCH_DIR=folder        where to work (default build/bench-tmp);
#                                 the run uses and then removes its store/
#                                 subfolder only. Must be on a disk, not
#                                 tmpfs, for the sync figures to mean anything
#   STORE_BENCH_DROP_CACHES=1     cold opens use /proc/sys/vm/drop_caches
#                                 (root; empties everyone's page cache)
#                                 instead of posix_fadvise per file
#
# A missed goal is a finding, not a failure: the exit status is 0 unless a
# benchmark could not run (or STRICT=1).
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1

BIN=build/bench/store/store_bench
if ! make -s "$BIN"; then
    [ -x "$BIN" ] || { echo "run.sh: cannot build $BIN" >&2; exit 1; }
    echo "run.sh: WARNING: make failed; running the existing $BIN, which may be stale" >&2
fi

W=${STORE_BENCH_DIR:-build/bench-tmp}/store
mkdir -p "$W" || exit 1
fstype=$(stat -f -c %T "$W")
if [ "$fstype" = tmpfs ]; then
    echo "run.sh: WARNING: $W is on tmpfs: fsync does nothing there, the durability" \
         "figures will be meaningless. Set STORE_BENCH_DIR to a folder on a disk." >&2
fi
avail_kb=$(df -Pk "$W" | awk 'NR==2 {print $4}')
if [ "${avail_kb:-0}" -lt $((3 * 1024 * 1024)) ]; then
    echo "run.sh: need about 3 GB free in $W (have $((avail_kb / 1024)) MB)" >&2
    exit 1
fi

# Timed phases: seconds per phase and rounds. Data sizes stay the same in a
# quick run, so every goal keeps its meaning (only the noise grows).
if [ "${QUICK:-0}" = 1 ]; then
    APPEND="-t 0.5 -r 2" CONC="-t 1 -r 1" OPENS="-r 5" RECON="-r 1" mode=quick
else
    APPEND="-t 2 -r 3" CONC="-t 2 -r 3" OPENS="-r 9" RECON="-r 3" mode=full
fi

# Accounts that grow at every run start fresh; the two big ones are reused
# only when the previous run was asked to keep them.
rm -rf "$W/append" "$W/concurrent"
[ "${KEEP:-0}" = 1 ] || rm -rf "$W/big" "$W/crash"
# shellcheck disable=SC2317  # called by the trap
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT

LOG="$W/run.log"
: >"$LOG"
failed=0
run() {
    local t0=$SECONDS
    echo "-- store_bench $*"
    "$BIN" "$@" 2>&1 | tee -a "$LOG" | grep -v '^SUMMARY'
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "run.sh: store_bench $* failed (exit $rc)" >&2
        failed=1
    fi
    echo "   ($((SECONDS - t0)) s)"
}

start=$SECONDS
echo "== account store benchmarks ($mode run), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $(nproc) CPUs, $(uname -sr), work folder on $fstype"
# shellcheck disable=SC2086  # the option strings are meant to split
run $APPEND append "$W/append"
# shellcheck disable=SC2086
run $CONC concurrent "$W/concurrent"
run build "$W/big"
# shellcheck disable=SC2086
run $OPENS open "$W/big"
# The same opens with glibc's malloc asking for transparent huge pages: the
# difference is what page faults on freshly allocated memory cost this
# machine (see docs/bench-store.md). A diagnostic, not a goal.
echo "-- diagnostic: open with GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$BIN" -r 5 open "$W/big" 2>&1 |
    grep -E '^open_(warm|cold):' | sed 's/ (goal.*//; s/^/   huge pages: /'
# shellcheck disable=SC2086
run $RECON reconstruct "$W/big"
# A process of its own, so that nothing of the store is in memory before.
run rss "$W/big"
run crash "$W/crash"

echo
echo "== summary ($mode run, $(date -u '+%Y-%m-%d'), $((SECONDS - start)) s)"
misses=0
{
    printf '%-46s | %-38s | %-8s | %s\n' "goal" "measured" "target" "result"
    printf '%s\n' "-----------------------------------------------+----------------------------------------+----------+-------"
    while IFS=$'\t' read -r _ name fig goal result; do
        printf '%-46s | %-38s | %-8s | %s\n' "$name" "$fig" "$goal" "$result"
        [ "$result" = PASS ] || misses=$((misses + 1))
    done < <(grep '^SUMMARY' "$LOG" | sort -t$'\t' -k2,2)
}
echo "$misses goal(s) missed"
[ "$failed" = 0 ] || exit 1
[ "${STRICT:-0}" = 1 ] && [ "$misses" -gt 0 ] && exit 1
exit 0
