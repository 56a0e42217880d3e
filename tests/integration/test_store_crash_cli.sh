#!/usr/bin/env bash
# test_store_crash_cli.sh - kill -9 the real `haven import` at random
# moments, then check through the real commands that the account verifies,
# holds exactly a prefix of the mbox (each message once, in order), and that
# `import --skip K` finishes the job without duplicates. The unit test
# test_store_crash does the same below the API with every kind of write;
# this one checks the operator's path (import, verify, export, reconstruct).
# HAVEN_SEED picks the kill moments.
set -eu
cd "$(dirname "$0")/../.."

N=30000
KILLS=6
root=$PWD
seed=${HAVEN_SEED:-20261125}
RANDOM=$seed
echo "seed=$seed (set HAVEN_SEED to change)"
# A tmpfs when there is one: a kill -9 is a process crash, which a tmpfs
# keeps as faithfully as a disk, and 30,000 blob files are slow to create
# and delete on a busy disk. TMPDIR, when set, wins.
base=${TMPDIR:-}
if [ -z "$base" ] && [ -d /dev/shm ] && [ -w /dev/shm ] &&
    [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt 524288 ]; then
    base=/dev/shm
fi
tmp=$(mktemp -d -p "${base:-/tmp}")
pid=
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
haven() { "$root/bin/haven" -c "$tmp/haven.conf" "$@"; }
acct=$tmp/data/accounts/example.org/crash

[ -x bin/haven ] || fail "bin/haven is not built (run make)"
printf 'data_dir = data\ndirectory = sqlite:directory.sqlite\n' >"$tmp/haven.conf"
haven user add crash@example.org >"$tmp/out" 2>&1 || fail "user add: $(cat "$tmp/out")"

python3 - "$N" >"$tmp/in.mbox" <<'PY'
import random, sys
n = int(sys.argv[1])
rnd = random.Random(7)
for i in range(n):
    body = "".join(rnd.choice("abcdefghij \n") for _ in range(rnd.randrange(100, 500)))
    sys.stdout.write("From a@example.net Mon Jan  1 00:00:00 2024\n"
                     "From: a@example.net\nSubject: crash #%d\n\n%s\n\n" % (i, body))
PY

log_bytes() { stat -c %s "$acct"/log/*.log 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }

# Exported subjects must be exactly #0 .. #(k-1), in order; sets k.
check_prefix() {
    haven export crash@example.org INBOX --mbox "$tmp/out.mbox" >"$tmp/export.err" 2>&1 ||
        fail "export: $(cat "$tmp/export.err")"
    sed -n 's/^Subject: crash #//p' "$tmp/out.mbox" >"$tmp/got"
    k=$(wc -l <"$tmp/got")
    if [ "$k" -gt 0 ]; then
        seq 0 $((k - 1)) | cmp -s - "$tmp/got" ||
            fail "the mailbox is not the first $k messages, each once, in order"
    fi
}

done_n=0
for round in $(seq "$KILLS"); do
    # Import commits 1000 messages at a time: with less than two batches
    # left there is no middle to kill it in.
    [ $((N - done_n)) -ge 2000 ] || break
    # Not through the haven() function: $! must be the importer itself.
    "$root/bin/haven" -c "$tmp/haven.conf" import crash@example.org INBOX "$tmp/in.mbox" \
        --skip "$done_n" >"$tmp/import.out" 2>&1 &
    pid=$!
    # A random moment: once the log has grown past a random point (within a
    # share of what is left, so every kill lands before the end; an append
    # record is 92 bytes), plus a random few milliseconds, so kills land
    # inside batches too.
    start=$(log_bytes)
    target=$((start + (RANDOM * 32768 + RANDOM) % ((N - done_n) * 92 / (KILLS - round + 2) + 1)))
    while kill -0 "$pid" 2>/dev/null && [ "$(log_bytes)" -lt "$target" ]; do sleep 0.005; done
    sleep "0.0$((RANDOM % 10))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    haven verify crash@example.org >"$tmp/verify.out" 2>&1 ||
        fail "round $round: verify after kill -9: $(head -5 "$tmp/verify.out")"
    check_prefix
    [ "$k" -ge "$done_n" ] || fail "round $round: $done_n messages were imported, now $k"
    echo "kill $round: $k of $N imported ($(grep -c '^note:' "$tmp/verify.out" || true) notes from verify)"
    done_n=$k
done

haven import crash@example.org INBOX "$tmp/in.mbox" --skip "$done_n" >"$tmp/import.out" 2>&1 ||
    fail "resumed import: $(tail -3 "$tmp/import.out")"
check_prefix
[ "$k" -eq "$N" ] || fail "after resuming, the mailbox does not hold all $N messages once"
haven verify crash@example.org >"$tmp/verify.out" 2>&1 || fail "verify: $(head -5 "$tmp/verify.out")"
grep -q . "$tmp/verify.out" && ! grep -qv '^crash@example.org: ok$' "$tmp/verify.out" ||
    fail "verify is not clean after the resumed import: $(head -5 "$tmp/verify.out")"
haven reconstruct crash@example.org | grep -q " $N messages" || fail "reconstruct count"
# A writer's open sweeps up what the killed imports left half-written.
[ -z "$(ls -A "$acct/blobs/tmp")" ] || fail "temp blobs of killed imports left behind"
[ "$(ls -A "$acct/index")" = index.ckpt ] || fail "temp index files left behind: $(ls "$acct/index")"
echo "PASS"
