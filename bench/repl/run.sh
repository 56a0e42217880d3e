#!/usr/bin/env bash
# bench/repl/run.sh - replication benchmarks on two havend instances on one
# machine (loopback), then a summary with each goal and PASS/MISS.
# docs/bench-repl.md says what each figure means.
#
#   bench/repl/run.sh               lag, sync vs async throughput, initial sync
#   REPL_BENCH_BYTES=N              size of the initial-sync account (default 256 MB)
#   REPL_BENCH_MSGS180K=1           also sync a 180,000-message account
#   REPL_BENCH_DIR=folder           where to work (default build/bench-tmp); must
#                                   be on a disk, not tmpfs
#   STRICT=1                        exit 1 when a goal is missed
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
make -s bin/haven bin/havend build/bench/repl/repl_bench || exit 1
BIN=build/bench/repl/repl_bench
W=$(realpath -m "${REPL_BENCH_DIR:-build/bench-tmp}/repl")
rm -rf "$W"
mkdir -p "$W" || exit 1
BYTES=${REPL_BENCH_BYTES:-268435456}
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(13)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
mk() { # name first-port-index
    local d=$W/$1 i=$2
    bin/haven init "$d" --imap-port "${ports[$i]}" --smtp-port "${ports[$((i+1))]}" \
        --submission-port "${ports[$((i+2))]}" --lmtp-port "${ports[$((i+3))]}" \
        --http-port "${ports[$((i+4))]}" --imaps-port 0 --submissions-port 0 >/dev/null || exit 1
    openssl rand -hex 32 > "$d/repl.secret" 2>/dev/null || echo 0123456789abcdef0123456789abcdef > "$d/repl.secret"
    cmp -s "$d/repl.secret" "$W/secret" 2>/dev/null || { [ -f "$W/secret" ] && cp "$W/secret" "$d/repl.secret" || cp "$d/repl.secret" "$W/secret"; }
    chmod 600 "$d/repl.secret"
    printf 'repl_secret_file = repl.secret\nrepl_mode = sync\nrepl_sync_timeout_ms = 10000\n' >> "$d/haven.conf"
}
mk pri 0
mk rep 5
RP=${ports[12]}
echo "repl_port = $RP" >> "$W/pri/haven.conf"
echo "repl_primary = 127.0.0.1:$RP" >> "$W/rep/haven.conf"

start() { bin/havend -c "$W/$1/haven.conf" -f 2>>"$W/$1.log" & PIDS+=($!); eval "PID_$1=$!"; }
wait_sock() { for _ in $(seq 200); do [ -S "$W/$1/run/repl.sock" ] && return 0; sleep 0.05; done; echo "no repl service in $1" >&2; exit 1; }
start pri; wait_sock pri
start rep; wait_sock rep
PD=$W/pri/data RD=$W/rep/data

echo "== lag under steady delivery load (200 msgs/s of 4 KiB over 10 accounts, 2000 msgs)"
lag=$($BIN lag "$PD" "$RD" 10 2000 200) || exit 1
echo "$lag"
echo "== throughput: 4 writers, async (no wait) then sync (each append waits for the ack)"
ta=$($BIN throughput "$W/pri/haven.conf" 4 5 async) || exit 1
echo "$ta"
ts=$($BIN throughput "$W/pri/haven.conf" 4 5 sync) || exit 1
echo "$ts"

echo "== initial sync of a $((BYTES / 1048576)) MB account (64 KiB messages) to an empty replica"
kill "$PID_rep"; wait "$PID_rep" 2>/dev/null
rm -rf "$RD/accounts"
fill=$($BIN fill "$PD" big@bench.example "$BYTES" 65536) || exit 1
echo "$fill"
modseq=$(echo "$fill" | sed -n 's/.*modseq=\([0-9]*\).*/\1/p')
disk=$($BIN diskbw "$W" "$BYTES") || exit 1
echo "$disk"
sync; start rep
cu=$($BIN catchup "$RD" big@bench.example "$modseq") || exit 1
echo "$cu"
if [ "${REPL_BENCH_MSGS180K:-0}" = 1 ]; then
    echo "== 180,000-message account (1 KiB each): filled while the replica runs, streamed as it commits"
    f2=$($BIN fill "$PD" many@bench.example $((180000 * 1024)) 1024) || exit 1
    echo "$f2"
    m2=$(echo "$f2" | sed -n 's/.*modseq=\([0-9]*\).*/\1/p')
    $BIN catchup "$RD" many@bench.example "$m2" || exit 1
fi
check=$(bin/haven -c "$W/pri/haven.conf" replcheck 2>&1); rc=$?
echo "$check" | tail -1

p99=$(echo "$lag" | sed -n 's/.*p99=\([0-9.]*\).*/\1/p')
a=$(echo "$ta" | sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p')
s=$(echo "$ts" | sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p')
secs=$(echo "$cu" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
mbps=$(echo "$disk" | sed -n 's/.*MBps=\([0-9.]*\).*/\1/p')
miss=0
row() { printf '%-44s %-14s %-12s %s\n' "$1" "$2" "$3" "$4"; [ "$4" = PASS ] || miss=1; }
verdict() { awk "BEGIN{exit !($1)}" && echo PASS || echo MISS; }
echo
printf '%-44s %-14s %-12s %s\n' "figure" "measured" "goal" "result"
row "lag p99 (commit on primary -> durable on replica)" "${p99} ms" "< 20 ms" "$(verdict "$p99 < 20")"
ratio=$(awk "BEGIN{printf \"%.2f\", $s / $a}")
row "sync / async throughput" "$ratio ($s/$a)" ">= 0.8" "$(verdict "$ratio >= 0.8")"
isync=$(awk "BEGIN{printf \"%.1f\", $BYTES / $secs / 1e6}")
ir=$(awk "BEGIN{printf \"%.2f\", $isync / $mbps}")
row "initial sync MB/s / disk sequential MB/s" "$ir ($isync/$mbps)" ">= 0.5" "$(verdict "$ir >= 0.5")"
row "replcheck after the run" "exit $rc" "0" "$([ $rc = 0 ] && echo PASS || echo MISS)"
[ "${STRICT:-0}" = 1 ] && exit $miss
exit 0
