#!/usr/bin/env bash
# test_init.sh - the operator's first five minutes: `haven init`, `havend`
# (foreground and daemon), `haven status`, the pid lock, signals, and the
# command frame's help and exit statuses. Drives the real binaries.
set -eu
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
haven() { bin/haven "$@"; }
inst=$tmp/inst
conf=$inst/haven.conf

# Waits (up to ~10 s) until `haven status` gets an answer from havend.
wait_up() {
    for _ in $(seq 100); do
        haven -c "$conf" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "havend did not answer on its admin socket"
}
# Waits (up to ~10 s) until process $1 has exited. A daemon is not our
# child, and a container's pid 1 may never reap it: a zombie counts as gone.
wait_gone() {
    for _ in $(seq 100); do
        state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
        [ -z "$state" ] || [ "$state" = Z ] && return 0
        sleep 0.1
    done
    fail "process $1 did not stop"
}

echo "== help and usage"
help=$(haven --help)
for c in init user domain import export verify reconstruct status \
         queue replcheck promote move backup restore; do
    echo "$help" | grep -q "^  $c\b" || fail "haven --help does not explain '$c'"
done
haven --version | grep -q '^haven ' || fail "haven --version"
rc=0; haven no-such-command 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "unknown command exited $rc, want 2"
grep -q "unknown command 'no-such-command'" "$tmp/err" || fail "unknown command message"
rc=0; haven 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "no command exited $rc, want 2"
rc=0; haven -c "$conf" backup 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "a command not built yet exited $rc, want 2"
grep -q "'backup' is not built yet" "$tmp/err" || fail "not-built message"
haven help status | grep -q 'admin' || fail "haven help status"
# Help needs no instance, for the commands' own help texts as well.
for c in init user domain import export verify reconstruct status queue; do
    haven -c "$tmp/none.conf" "$c" --help >/dev/null || fail "haven $c --help without a config"
done
bin/havend --help >"$tmp/out" || fail "havend --help exited non-zero"
grep -q 'coming later' "$tmp/out" || fail "havend --help does not say what is coming"
rc=0; bin/havend --bogus 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "havend with a bad option exited $rc, want 2"

echo "== no instance yet"
rc=0; haven -c "$conf" status 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "status without a config exited $rc, want 1"
grep -q "cannot read $conf" "$tmp/err" || fail "missing-config message: $(cat "$tmp/err")"
grep -q "haven init" "$tmp/err" || fail "missing-config message does not point to init"

echo "== haven init"
haven init "$inst" --imap-port 31143 --smtp-port 32525 --submission-port 31587 \
    --lmtp-port 32424 --http-port 38080 --hostname mail.example.test >"$tmp/out"
[ -f "$conf" ] || fail "no haven.conf"
for d in data run queue tls; do [ -d "$inst/$d" ] || fail "no $d/"; done
[ -s "$inst/directory.sqlite" ] || fail "no directory database"
[ -s "$inst/tls/cert.pem" ] || fail "no certificate"
[ -s "$inst/tls/key.pem" ] || fail "no key"
[ "$(stat -c %a "$inst/tls/key.pem")" = 600 ] || fail "key.pem mode is $(stat -c %a "$inst/tls/key.pem")"
grep -q '^imap_port = 31143$' "$conf" || fail "imap port not in config"
grep -q '^smtp_port = 32525$' "$conf" || fail "smtp port not in config"
grep -q '^submission_port = 31587$' "$conf" || fail "submission port not in config"
grep -q '^lmtp_port = 32424$' "$conf" || fail "lmtp port not in config"
grep -q '^http_port = 38080$' "$conf" || fail "http port not in config"
grep -q '^imaps_port = 0$' "$conf" || fail "imaps should be disabled when the imap port moved"
grep -q '^plaintext_loopback = yes$' "$conf" || fail "plaintext from loopback not allowed"
grep -q "$tmp" "$conf" && fail "config holds absolute paths"
if command -v openssl >/dev/null; then
    openssl x509 -in "$inst/tls/cert.pem" -noout -subject | grep -q 'mail.example.test' ||
        fail "certificate CN"
    openssl x509 -in "$inst/tls/cert.pem" -noout -ext subjectAltName |
        grep -q 'IP Address:127.0.0.1' || fail "certificate SAN lacks 127.0.0.1"
    openssl x509 -in "$inst/tls/cert.pem" -noout -checkend 86400 >/dev/null ||
        fail "certificate not valid for a day"
fi

echo "== init refuses to overwrite"
cp "$conf" "$tmp/conf.before"
rc=0; haven init "$inst" 2>"$tmp/err" || rc=$?
[ "$rc" -ne 0 ] || fail "second init succeeded"
grep -q 'already exists' "$tmp/err" || fail "second init message: $(cat "$tmp/err")"
cmp -s "$conf" "$tmp/conf.before" || fail "second init changed haven.conf"
rc=0; haven init "$tmp/other" --imap-port 70000 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "a bad port exited $rc, want 2"
[ -e "$tmp/other/haven.conf" ] && fail "a bad port still wrote a config"

echo "== offline status"
for u in alice bob; do
    printf 'secret\n' | haven -c "$conf" user add "$u@example.test" --password-stdin >/dev/null ||
        fail "user add $u"
done
rc=0; haven -c "$conf" status >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "status with havend stopped exited $rc, want 1"
grep -q 'not running' "$tmp/err" || fail "status does not say havend is not running"
grep -q '^accounts: 2$' "$tmp/out" || fail "offline account count: $(cat "$tmp/out")"

echo "== havend in the foreground"
bin/havend -c "$conf" -f 2>"$tmp/havend.log" &
hpid=$!
pids+=("$hpid")
wait_up
haven -c "$conf" status >"$tmp/out" || fail "status failed with havend up"
grep -q '^havend: running$' "$tmp/out" || fail "status output: $(cat "$tmp/out")"
grep -q "^pid: $hpid$" "$tmp/out" || fail "status pid: $(cat "$tmp/out")"
grep -q '^accounts: 2$' "$tmp/out" || fail "status accounts: $(cat "$tmp/out")"
[ "$(cat "$inst/run/havend.pid")" = "$hpid" ] || fail "pid file does not hold $hpid"
[ "$(stat -c %a "$inst/run/admin.sock")" = 600 ] || fail "admin socket mode"
grep -q 'not_built=' "$tmp/havend.log" || fail "startup line does not say what is not built"

echo "== a second havend is refused"
rc=0; bin/havend -c "$conf" -f 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "second havend exited $rc, want 1"
grep -q 'another havend' "$tmp/err" || fail "second havend message: $(cat "$tmp/err")"
haven -c "$conf" status >/dev/null || fail "the first havend was disturbed"

echo "== SIGHUP reloads"
sed -i 's/^# log_level = info$/log_level = debug/' "$conf"
kill -HUP "$hpid"
for _ in $(seq 100); do grep -q 'reload .*changed=log_level' "$tmp/havend.log" && break; sleep 0.1; done
grep -q 'reload .*changed=log_level' "$tmp/havend.log" || fail "no reload logged"
haven -c "$conf" status | grep -q '^reloads: 1$' || fail "status does not count the reload"

echo "== SIGTERM stops it cleanly"
kill -TERM "$hpid"
rc=0; wait "$hpid" || rc=$?
[ "$rc" -eq 0 ] || fail "havend exited $rc after SIGTERM"
[ -e "$inst/run/admin.sock" ] && fail "admin socket left behind"
grep -q 'stop signal=SIGTERM' "$tmp/havend.log" || fail "no stop logged"

echo "== havend as a daemon"
bin/havend -c "$conf" >"$tmp/out" || fail "havend (daemon) did not start"
# It returns once the daemon is up, so the pid file is already written.
dpid=$(cat "$inst/run/havend.pid")
pids+=("$dpid")
grep -q "started (pid $dpid)" "$tmp/out" || fail "daemon start message: $(cat "$tmp/out")"
wait_up
kill -0 "$dpid" || fail "daemon pid $dpid not alive"
rc=0; bin/havend -c "$conf" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "second daemon exited $rc, want 1"
grep -q 'another havend' "$tmp/err" || fail "second daemon message: $(cat "$tmp/err")"
kill -TERM "$dpid"
wait_gone "$dpid"
[ -e "$inst/run/admin.sock" ] && fail "daemon left its admin socket"

echo "PASS"
