#!/usr/bin/env bash
# test_dir_pg.sh - the directory on a real PostgreSQL: starts a throwaway
# server (initdb + pg_ctl from Debian's postgresql package) in a temporary
# folder on a free loopback port, runs the whole directory unit suite
# against it (HAVEN_TEST_PG), then `haven user/domain/store` against an
# instance whose `directory = pg:...`, and stops the server on the way out.
#
# PostgreSQL refuses to run as root, so as root the server runs as the
# postgres user (made by the package) in a folder that user owns.
#
# With HAVEN_PG_KEEP=1 the server is left running and its conninfo printed,
# for running build/tests/test_dir by hand.
set -eu
cd "$(dirname "$0")/../.."

fail() { echo "FAIL: $*" >&2; exit 1; }

[ -x bin/haven ] || fail "bin/haven is not built (run make)"
[ -x build/tests/test_dir ] || fail "build/tests/test_dir is not built (run make build/tests/test_dir)"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] ||
    fail "PostgreSQL server binaries not found (install Debian's postgresql: scripts/deps.sh)"

tmp=$(mktemp -d)
chmod 755 "$tmp"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || fail "running as root and there is no postgres user to run the server"
    as_pg=(runuser -u postgres --)
    # initdb's shell commands write to /dev/null as that user.
    [ -c /dev/null ] || fail "/dev/null is not a character device on this machine" \
        "($(stat -c '%F, mode %a' /dev/null)): initdb cannot run as postgres; restore it" \
        "(mknod -m 666 /dev/null c 1 3)"
fi
pgdata=$tmp/pg
mkdir -p "$pgdata"
[ ${#as_pg[@]} -eq 0 ] || chown postgres: "$pgdata"

started=0
cleanup() {
    if [ "$started" = 1 ] && [ "${HAVEN_PG_KEEP:-0}" != 1 ]; then
        "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    [ "${HAVEN_PG_KEEP:-0}" = 1 ] || rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== initdb and start on 127.0.0.1:$port"
# trust is for this throwaway server only: it listens on loopback, and its
# Unix socket is in a folder only its user can reach. fsync off: nothing
# here must survive a crash of the machine, and it saves seconds.
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U haven --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; fail "initdb failed"; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pgdata -c fsync=off" \
    start >/dev/null || { cat "$pgdata/server.log" >&2; fail "pg_ctl start failed"; }
started=1
"${as_pg[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U haven haven ||
    fail "createdb failed"
"${as_pg[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U haven haven_cli ||
    fail "createdb failed"

conninfo="host=127.0.0.1 port=$port dbname=haven user=haven"
if [ "${HAVEN_PG_KEEP:-0}" = 1 ]; then
    echo "server left running: HAVEN_TEST_PG='$conninfo' (data in $pgdata)"
fi

echo "== unit suite against PostgreSQL"
HAVEN_TEST_PG=$conninfo build/tests/test_dir || fail "build/tests/test_dir failed against PostgreSQL"
if [ -x build/tests-asan/test_dir ]; then
    echo "== unit suite against PostgreSQL (ASan)"
    HAVEN_TEST_PG=$conninfo build/tests-asan/test_dir ||
        fail "build/tests-asan/test_dir failed against PostgreSQL"
fi

echo "== haven user and domain with directory = pg:..."
inst=$tmp/inst
mkdir -p "$inst"
conf=$inst/haven.conf
printf 'data_dir = data\ndirectory = pg:host=127.0.0.1 port=%s dbname=haven_cli user=haven\n' \
    "$port" >"$conf"
h() { bin/haven -c "$conf" "$@"; }
out=$(printf 'pw1\n' | h user add Alice@Example.ORG --password-stdin) || fail "user add: $out"
h user add bob@example.org >/dev/null || fail "user add bob"
err=$(h user add alice@example.org 2>&1 >/dev/null) && fail "duplicate user add succeeded"
case $err in "haven: "*"already exists"*) ;; *) fail "duplicate: unexpected reason '$err'" ;; esac
h user state bob@example.org held || fail "user state"
list=$(h user list) || fail "user list"
[ "$(printf '%s\n' "$list" | cut -d' ' -f1,2)" = "alice@example.org active
bob@example.org held" ] || fail "user list printed: $list"
h user list example.org >/dev/null || fail "user list DOMAIN"
err=$(h user state nobody@example.org held 2>&1) && fail "state of an unknown account succeeded"
case $err in "haven: "*nobody@example.org*) ;; *) fail "unknown account: unexpected reason '$err'" ;; esac
[ "$(h domain list)" = "example.org" ] || fail "domain list: $(h domain list)"
err=$(h domain del example.org 2>&1) && fail "domain del of a domain in use succeeded"
case $err in *"2 accounts"*) ;; *) fail "domain del: unexpected reason '$err'" ;; esac
[ -d "$inst/data/accounts/example.org/alice" ] || fail "user add made no mail folder"

# What the CLI wrote is in PostgreSQL, and nowhere else.
[ ! -e "$inst/directory.sqlite" ] || fail "a SQLite directory was created next to the config"
rows=$("$pgbin/psql" -h 127.0.0.1 -p "$port" -U haven -d haven_cli -Atc \
       "SELECT address || ' ' || state FROM accounts ORDER BY address")
[ "$rows" = "alice@example.org active
bob@example.org held" ] || fail "accounts table holds: $rows"

echo "== haven store with directory = pg:..."
h store add s1 10.0.0.1:143 >/dev/null || fail "store add NAME ADDRESS"
h store add s2 --address 10.0.0.2:143 --lmtp 10.0.0.2:24 --repl '[::1]:7000' --replica \
    >/dev/null || fail "store add --address --lmtp --repl --replica"
err=$(h store add s3 10.0.0.3:143 --lmtp 10.0.0.3 2>&1) && fail "store add with a bad --lmtp succeeded"
case $err in "haven: "*"host:port"*) ;; *) fail "bad --lmtp: unexpected reason '$err'" ;; esac
h store show s3 >/dev/null 2>&1 && fail "a refused store add left store s3 behind"
h store address s1 --lmtp=10.0.0.1:2424 >/dev/null || fail "store address NAME --lmtp"
h store address s2 10.0.0.9:143 --repl '' >/dev/null || fail "store address NAME ADDRESS --repl ''"
rc=0
h store address s2 >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "store address without any address exited $rc, want 2"
list=$(h store list) || fail "store list"
[ "$list" = "s1	10.0.0.1:143	primary	0	10.0.0.1:2424	-
s2	10.0.0.9:143	replica	0	10.0.0.2:24	-" ] || fail "store list printed: $list"
show=$(h store show s1) || fail "store show"
case $show in *"lmtp_address: 10.0.0.1:2424"*"repl_address: -"*) ;; *) fail "store show printed: $show" ;; esac
rows=$("$pgbin/psql" -h 127.0.0.1 -p "$port" -U haven -d haven_cli -Atc \
       "SELECT name || ' ' || address || ' ' || lmtp_address || ' [' || repl_address || ']' \
        FROM stores ORDER BY name")
[ "$rows" = "s1 10.0.0.1:143 10.0.0.1:2424 []
s2 10.0.0.9:143 10.0.0.2:24 []" ] || fail "stores table holds: $rows"

echo "PASS"
