#!/usr/bin/env bash
# bench/repl/run.sh - replication benchmarks on two havend instances on one
# machine (loopback), then a summary with each goal and PASS/MISS.
# docs/bench-repl.md says what each figure means.
#
#   bench/repl/run.sh               lag, sync vs async throughput, initial sync
#   PARTS="lag tput initial"        which parts to run (default: those three);
#                                   also msgs180k (a 180,000-message account)
#                                   and big5g (a 5 GB account's initial sync
#                                   with its progress; not in the default)
#   REPL_BENCH_BYTES=N              size of the initial-sync account (default 256 MB)
#   REPL_BENCH_BIG_BYTES=N          size of the big5g account (default 5 GB; made
#                                   smaller, and said so, when the disk lacks room)
#   REPL_BENCH_MSGS180K=1           same as adding msgs180k to PARTS
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
PARTS=${PARTS:-lag tput initial}
[ "${REPL_BENCH_MSGS180K:-0}" = 1 ] && PARTS="$PARTS msgs180k"
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
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
num() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

# An initial sync to an empty replica: the replica stops, its accounts go
# aside (renamed, not deleted: ext4 skips the inodes of files deleted in the
# last minutes when it makes new files, which would slow the measurement
# down), ACCOUNT is filled on the primary, the replica starts and is timed.
initial_sync() { # account bytes msgsize
    kill "$PID_rep"; wait "$PID_rep" 2>/dev/null
    [ -d "$RD/accounts" ] && mv "$RD/accounts" "$W/rep-accounts.$(date +%s%N)"
    fill=$($BIN fill "$PD" "$1" "$2" "$3") || exit 1
    echo "$fill"
    modseq=$(echo "$fill" | num modseq)
    sync
    start rep
}

if has lag; then
    echo "== lag under steady delivery load (200 msgs/s of 4 KiB over 10 accounts, 2000 msgs)"
    lag=$($BIN lag "$PD" "$RD" 10 2000 200) || exit 1
    echo "$lag"
fi
if has tput; then
    echo "== throughput: 4 writers, 10 rounds of 1 s sync (each append waits for the ack), 1 s async"
    tp=$($BIN throughput "$W/pri/haven.conf" 4 1 10) || exit 1
    echo "$tp"
fi
if has initial; then
    echo "== initial sync of a $((BYTES / 1048576)) MB account (64 KiB messages) to an empty replica"
    initial_sync big@bench.example "$BYTES" 65536
    cu=$($BIN catchup "$RD" big@bench.example "$modseq") || exit 1
    echo "$cu"
    # The disk, three times each, the median: the VM's disk swings widely.
    # One file in 1 MiB writes with an fdatasync every 16 MiB (the
    # replica's apply interval in a backlog); and the same bytes as the
    # replica writes them, one file per message (for comparison only).
    d=() f=()
    for i in 1 2 3; do
        d+=($($BIN diskbw "$W" "$BYTES" 16777216 | num MBps)) || exit 1
        f+=($($BIN diskfiles "$W" "$BYTES" 65536 16777216 | num MBps)) || exit 1
        mv "$W/diskfiles.tmp" "$W/diskfiles.$i"
    done
    echo "diskbw MBps=${d[*]} (one file, fdatasync every 16 MiB)"
    echo "diskfiles MBps=${f[*]} (64 KiB files as the replica writes blobs)"
    mbps=$(median3 "${d[@]}") fmbps=$(median3 "${f[@]}")
fi
if has msgs180k; then
    echo "== 180,000-message account (1 KiB each): filled while the replica runs, streamed as it commits"
    f2=$($BIN fill "$PD" many@bench.example $((180000 * 1024)) 1024) || exit 1
    echo "$f2"
    $BIN catchup "$RD" many@bench.example "$(echo "$f2" | num modseq)" || exit 1
fi
if has big5g; then
    BIG=${REPL_BENCH_BIG_BYTES:-5000000000}
    # Room for two copies (primary and replica) and 1 GB to spare.
    avail=$(( $(df -Pk "$W" | awk 'NR==2{print $4}') * 1024 ))
    if [ $((2 * BIG + 1000000000)) -gt "$avail" ]; then
        BIG=$(( (avail - 1000000000) / 2 / 1048576 * 1048576 ))
        echo "== not enough room for the big account: $((avail / 1000000)) MB free; using $((BIG / 1000000)) MB"
    fi
    echo "== initial sync of a $((BIG / 1000000)) MB account (64 KiB messages), with its progress"
    t=$(date +%s)
    initial_sync huge@bench.example "$BIG" 65536
    echo "(filled in $(( $(date +%s) - t )) s)"
    $BIN catchup "$RD" huge@bench.example "$modseq" > "$W/big.out" &
    CU=$!
    PIDS+=($CU)
    # What an operator watches: the primary's progress lines and
    # replcheck --status, every 10 s.
    while kill -0 "$CU" 2>/dev/null; do
        sleep 10
        kill -0 "$CU" 2>/dev/null || break
        grep "repl: progress.*account=huge" "$W/pri.log" | tail -1 | sed 's/^/  log: /'
        bin/haven -c "$W/pri/haven.conf" replcheck --status 2>&1 |
            grep -E "^replica |account huge" | sed 's/^/  status: /'
    done
    wait "$CU"
    big=$(cat "$W/big.out")
    echo "$big"
    bsecs=$(echo "$big" | num stream_seconds)
    echo "big initial sync: $((BIG / 1000000)) MB in ${bsecs} s = $(awk "BEGIN{printf \"%.1f\", $BIG / $bsecs / 1e6}") MB/s"
fi
check=$(bin/haven -c "$W/pri/haven.conf" replcheck 2>&1); rc=$?
echo "$check" | tail -1

miss=0
row() { printf '%-50s %-22s %-10s %s\n' "$1" "$2" "$3" "$4"; [ "$4" = PASS ] || [ "$4" = "-" ] || miss=1; }
verdict() { awk "BEGIN{exit !($1)}" && echo PASS || echo MISS; }
echo
printf '%-50s %-22s %-10s %s\n' "figure" "measured" "goal" "result"
if has lag; then
    p99=$(echo "$lag" | num p99)
    row "lag p99 (commit on primary -> durable on replica)" "${p99} ms" "< 20 ms" "$(verdict "$p99 < 20")"
fi
if has tput; then
    ratio=$(echo "$tp" | num ratio_median)
    row "sync / async throughput (median of 10 rounds)" "$ratio ($(echo "$tp" | num sync_msgs_per_s)/$(echo "$tp" | num async_msgs_per_s))" ">= 0.8" "$(verdict "$ratio >= 0.8")"
fi
if has initial; then
    secs=$(echo "$cu" | num stream_seconds)
    isync=$(awk "BEGIN{printf \"%.1f\", $BYTES / $secs / 1e6}")
    ir=$(awk "BEGIN{printf \"%.2f\", $isync / $mbps}")
    row "initial sync MB/s / disk sequential MB/s" "$ir ($isync/$mbps)" ">= 0.5" "$(verdict "$ir >= 0.5")"
    row "initial sync MB/s / same files written locally" "$(awk "BEGIN{printf \"%.2f\", $isync / $fmbps}") ($isync/$fmbps)" "-" "-"
fi
row "replcheck after the run" "exit $rc" "0" "$([ $rc = 0 ] && echo PASS || echo MISS)"
[ "${STRICT:-0}" = 1 ] && exit $miss
exit 0
