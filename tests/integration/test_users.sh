#!/usr/bin/env bash
# test_users.sh - `haven user` and `haven domain` through the real binary:
# every subcommand, its output, and every refusal (exit status 1 with one
# line "haven: <reason>", 2 for usage errors) leaving nothing half-written.
set -eu
cd "$(dirname "$0")/../.."
repo=$(pwd)

[ -x bin/haven ] || { echo "FAIL: bin/haven is not built (run make)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

conf=$tmp/haven.conf
printf 'data_dir = data\ndirectory = sqlite:directory.sqlite\n' >"$conf"
accounts=$tmp/data/accounts

fail() { echo "FAIL: $*" >&2; exit 1; }

# run WANT_RC ARGS...: bin/haven -c CONF ARGS with stdin from $input
# (empty by default); stdout to $tmp/out, stderr to $tmp/err. A failure
# must say why in one line; only the usage text (no arguments) is longer.
input=
long_err=
run() {
    local want=$1 rc=0
    shift
    printf '%s' "$input" | bin/haven -c "$conf" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    input=
    local one_line=$((1 - ${long_err:-0}))
    long_err=
    if [ "$rc" -ne "$want" ]; then
        sed 's/^/  out: /' "$tmp/out" >&2
        sed 's/^/  err: /' "$tmp/err" >&2
        fail "haven $* exited $rc, want $want"
    fi
    if [ "$want" -ne 0 ] && [ "$one_line" -eq 1 ]; then
        [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "haven $*: stderr is not one line: $(cat "$tmp/err")"
        grep -q '^haven: ' "$tmp/err" || fail "haven $*: stderr lacks 'haven: ': $(cat "$tmp/err")"
    fi
}
out_has() { grep -qF -- "$1" "$tmp/out" || fail "stdout lacks '$1': $(cat "$tmp/out")"; }
out_lacks() { ! grep -qF -- "$1" "$tmp/out" || fail "stdout has '$1': $(cat "$tmp/out")"; }
out_is() { [ "$(cat "$tmp/out")" = "$1" ] || fail "stdout is '$(cat "$tmp/out")', want '$1'"; }
err_has() { grep -qF -- "$1" "$tmp/err" || fail "stderr lacks '$1': $(cat "$tmp/err")"; }
# The directory as the operator sees it, to prove a refusal changed nothing.
snapshot() { bin/haven -c "$conf" user list; bin/haven -c "$conf" domain list; }

echo "== help and usage"
long_err=1
run 2 user
err_has "user add ADDRESS"
run 0 user help
out_has "user add ADDRESS"
out_has "user state ADDRESS active|held|moving|restoring"
long_err=1
run 2 domain
err_has "domain list"
run 0 domain help
out_has "domain del DOMAIN"
run 2 user frobnicate
err_has "unknown user command 'frobnicate'"
run 2 domain frobnicate
run 2 user add
err_has "usage: haven user add ADDRESS"
run 2 user add a@example.org --bogus
run 2 user add a@example.org b@example.org
run 2 user add a@example.org --quota
run 2 user del
run 2 user state a@example.org
run 2 user passwd
run 2 user show
run 2 user list a.org b.org
run 2 domain add
run 2 domain del
run 2 domain add a.org b.org
run 2 domain list extra

echo "== domains"
run 0 domain list
out_is ""
run 0 domain add Example.ORG
out_is "added domain example.org"
run 1 domain add example.org
err_has "domain example.org already exists"
run 1 domain add 'bad/domain'
err_has "malformed domain"
run 1 domain add ..
run 1 domain del nope.org
err_has "no domain nope.org"
run 0 domain add zz.test
run 0 domain list
out_is "$(printf 'example.org\nzz.test')"
run 0 domain del zz.test
out_is "deleted domain zz.test"
run 0 domain list
out_is "example.org"

echo "== user add"
run 0 user add Alice@Example.org
out_has "added alice@example.org on store local"
out_has "no password"
[ -d "$accounts/example.org/alice/log" ] || fail "user add did not create the mail folder"
input=$'s3cret pass\n'
run 0 user add bob@example.org --password-stdin --quota 5M
out_has "added bob@example.org"
out_lacks "no password"
run 0 user add carol@new.test --quota=1024
run 0 domain list
out_is "$(printf 'example.org\nnew.test')"
run 0 user add remote@example.org --store Store2
out_has "on store store2"
[ ! -e "$accounts/example.org/remote" ] || fail "a mail folder was made for another store's account"
run 0 user list
out_is "$(printf '%s\n' \
    'alice@example.org active local unlimited' \
    'bob@example.org active local 5242880' \
    'carol@new.test active local 1024' \
    'remote@example.org active store2 unlimited')"

echo "== user add refusals change nothing"
before=$(snapshot)
run 1 user add alice@example.org
err_has "account alice@example.org already exists"
run 1 user add ALICE@EXAMPLE.ORG
err_has "already exists"
for bad in '../x@y' 'a/b@c' 'a@..' 'a@b/../c' 'x@..' '.a@b.org' 'a..b@c.org' 'noat' '@b.org' \
           'a@' 'a b@c.org' 'a@b@c.org' "$(printf 'a%.0s' $(seq 65))@b.org" \
           "a@$(printf 'b%.0s' $(seq 300)).org"; do
    run 1 user add "$bad"
    err_has "malformed address"
done
run 1 user add d@example.org --quota lots
err_has "bad quota 'lots'"
run 1 user add d@example.org --store ../x
err_has "malformed store name"
input=''
run 1 user add e@example.org --password-stdin
err_has "no password on standard input"
input=$'\n'
run 1 user add e@example.org --password-stdin
err_has "empty password"
input="$(printf 'p%.0s' $(seq 1025))"
run 1 user add e@example.org --password-stdin
err_has "longer than 1024 bytes"
[ "$(snapshot)" = "$before" ] || fail "a refused user add changed the directory"
[ ! -e "$tmp/x" ] && [ ! -e "$tmp/data/x" ] && [ ! -e "$accounts/y" ] \
    || fail "a refused address left a folder behind"
[ "$(ls "$accounts")" = "$(printf 'example.org\nnew.test')" ] \
    || fail "unexpected folders under data/accounts: $(ls "$accounts")"
[ "$(ls "$accounts/example.org")" = "$(printf 'alice\nbob')" ] \
    || fail "unexpected folders under example.org: $(ls "$accounts/example.org")"

echo "== user show, list by domain"
run 0 user show BOB@example.org
out_has "address: bob@example.org"
out_has "state: active"
out_has "store: local"
out_has "quota: 5242880"
out_has "password: set"
out_has "last login attempt: never"
out_has "mail folder: $accounts/example.org/bob"
run 0 user show alice@example.org
out_has "password: none"
run 1 user show nobody@example.org
err_has "no account nobody@example.org"
run 1 user show '../x@y'
run 0 user list NEW.test
out_is "carol@new.test active local 1024"
run 1 user list nope.org
err_has "no domain nope.org"
run 1 user list 'a/b'

echo "== user passwd"
input=$'first pw\nignored second line\n'
run 0 user passwd alice@example.org --password-stdin
out_is "password of alice@example.org changed"
run 0 user show alice@example.org
out_has "password: set"
# Not a terminal, no --password-stdin: the first line of stdin all the same.
input=$'other pw\n'
run 0 user passwd bob@example.org
input=$'pw\n'
run 1 user passwd nobody@example.org --password-stdin
err_has "no account nobody@example.org"
input=''
run 1 user passwd alice@example.org --password-stdin
input="$(printf 'p%.0s' $(seq 1025))"
run 1 user passwd alice@example.org --password-stdin

# The stored hashes verify with libcrypt itself, through Python's crypt
# module (present in Debian 12's Python; skipped where it is gone).
if python3 -W ignore -c 'import crypt' 2>/dev/null; then
    python3 -W ignore - "$tmp/directory.sqlite" <<'EOF' || fail "stored password hashes do not verify"
import crypt, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
h = dict(db.execute("SELECT address, password_hash FROM accounts"))
assert h["alice@example.org"].startswith("$y$"), h
assert crypt.crypt("first pw", h["alice@example.org"]) == h["alice@example.org"]
assert crypt.crypt("first pw!", h["alice@example.org"]) != h["alice@example.org"]
assert crypt.crypt("other pw", h["bob@example.org"]) == h["bob@example.org"]
assert h["carol@new.test"] is None
EOF
fi

# On a terminal: asked twice, without echo. Python's pty gives us one.
if python3 -c 'import pty' 2>/dev/null; then
    python3 - "$repo/bin/haven" "$conf" <<'EOF' || fail "user passwd on a terminal"
import os, pty, select, signal, sys, time
haven, conf = sys.argv[1], sys.argv[2]

def session(first, second):
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(haven, [haven, "-c", conf, "user", "passwd", "carol@new.test"])
        finally:
            os._exit(127)
    seen = b""
    deadline = time.time() + 30
    # Reads until what appears (None: until the child closes the terminal).
    def expect(what):
        nonlocal seen
        while what is None or what not in seen:
            left = deadline - time.time()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise SystemExit("timed out waiting for %r; got %r" % (what, seen))
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                chunk = b""
            if not chunk:
                if what is None:
                    return
                raise SystemExit("no %r in %r" % (what, seen))
            seen += chunk
    expect(b"New password for carol@new.test: ")
    os.write(fd, first + b"\n")
    expect(b"Again: ")
    os.write(fd, second + b"\n")
    expect(None)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if first in seen or second in seen:
        raise SystemExit("password echoed: %r" % seen)
    return os.waitstatus_to_exitcode(status), seen

rc, out = session(b"tty pw", b"tty pw")
assert rc == 0 and b"password of carol@new.test changed" in out, (rc, out)
rc, out = session(b"tty pw", b"other")
assert rc == 1 and b"do not match" in out, (rc, out)
EOF
fi

echo "== user state and quota"
for s in held moving restoring active; do
    run 0 user state alice@example.org "$s"
    run 0 user show alice@example.org
    out_has "state: $s"
done
run 0 user state alice@example.org held
out_is "alice@example.org is now held (was active)"
run 0 user list example.org
out_has "alice@example.org held local unlimited"
run 0 user state alice@example.org held
out_has "unchanged"
run 1 user state alice@example.org frozen
err_has "unknown state 'frozen'"
run 1 user state alice@example.org ACTIVE
run 1 user state nobody@example.org held
err_has "no account nobody@example.org"
run 0 user show alice@example.org
out_has "state: held"
run 0 user quota alice@example.org 1G
run 0 user show alice@example.org
out_has "quota: 1073741824"
run 0 user quota alice@example.org 0
run 0 user show alice@example.org
out_has "quota: unlimited"
run 1 user quota alice@example.org -5
run 1 user quota alice@example.org 99999999999999999999
run 1 user quota nobody@example.org 1

echo "== domain del refused while in use"
run 1 domain del new.test
err_has "domain new.test still has 1 account"
run 0 domain list
out_has "new.test"

echo "== user del keeps the mail"
run 0 user del carol@NEW.test
out_has "deleted carol@new.test"
out_has "kept in $accounts/new.test/carol"
[ -d "$accounts/new.test/carol/log" ] || fail "user del removed the mail folder"
run 1 user del carol@new.test
err_has "no account carol@new.test"
run 1 user del '../x@y'
run 0 user list new.test
out_is ""
run 0 domain del new.test
run 0 domain list
out_is "example.org"
run 0 user del remote@example.org
out_has "on store store2 is kept"
# Added again, the account finds its old folder.
run 0 user add carol@new.test
out_has "kept its existing mail folder"

echo "== aliases"
run 0 alias add info@example.org alice@example.org
run 0 alias add team@aliases.test info@example.org
run 0 alias list
out_has "info@example.org	alice@example.org"
out_has "team@aliases.test	info@example.org"
run 0 domain list
out_has "aliases.test"
run 1 alias add alice@example.org bob@example.org
run 1 alias add loop@example.org loop@example.org
run 1 alias add 'bad address' alice@example.org
run 2 alias add info@example.org
run 0 alias del team@aliases.test
run 1 alias del team@aliases.test
run 0 alias del info@example.org
run 0 alias list
out_is ""

echo "== stores"
run 0 store add east 127.0.0.1:1143
run 0 store add west 127.0.0.1:2143 --replica
run 1 store add east 127.0.0.1:9
err_has "already exists"
run 0 store address west 127.0.0.1:3143
run 0 store list
out_has "east	127.0.0.1:1143	primary	0"
out_has "west	127.0.0.1:3143	replica	0"
run 0 store show west
out_has "address: 127.0.0.1:3143"
run 1 store address nope 127.0.0.1:1
run 1 store add 'bad name' 127.0.0.1:1
run 2 store add east
run 2 store frobnicate

echo "== relative config path, from another folder"
(cd "$tmp" && "$repo/bin/haven" -c haven.conf user list) >"$tmp/out" || fail "relative -c"
out_has "alice@example.org"
[ ! -e "$tmp/data/data" ] || fail "paths resolved twice"

echo "== a directory that cannot be opened"
printf 'directory = sqlite:no/such/folder/d.sqlite\n' >"$tmp/bad.conf"
rc=0
bin/haven -c "$tmp/bad.conf" user list >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "unopenable directory exited $rc, want 1"
[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "unopenable directory: $(cat "$tmp/err")"
printf 'directory = mysql:x\n' >"$tmp/bad.conf"
rc=0
bin/haven -c "$tmp/bad.conf" domain list >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "unknown backend exited $rc, want 1"
grep -q "unknown backend" "$tmp/err" || fail "unknown backend: $(cat "$tmp/err")"

echo "PASS"
