#!/usr/bin/env bash
# bench/imap/run.sh - Haven's IMAP service against Dovecot, side by side in
# the same run, then a summary table with each goal and PASS/MISS.
# docs/bench-imap.md says what each figure measures and how to read it.
#
#   bench/imap/run.sh            full run (about 9 minutes on a quiet machine)
#   QUICK=1 bench/imap/run.sh    shorter load phases, one round each, the
#                                same mailbox sizes, 1,000 idle connections
#                                only (about 5 minutes)
#   KEEP=1                       keep the work folder (instances, logs)
#   STRICT=1                     exit 1 when a goal is missed
#   IMAP_BENCH_DIR=folder        both instances live in folder/imap (default
#                                build/bench-tmp/imap; a disk, not tmpfs)
#   BIG_MSGS=180000              messages in the big mailbox
#   LOAD_CLIENTS="20 50"         concurrent clients of the load phase
#   LOAD_SECS, LOAD_ROUNDS       measured seconds per load run; runs per
#                                server and concurrency (interleaved)
#   LOAD_SESSION_ROUNDS=10       rounds of the mix between LOGIN and LOGOUT
#   LOAD_MIX=                    weights per command, e.g. "idle=0,search=2"
#                                (imap_load_bench -m; default: each once)
#   IDLE_CONNS="1000 10000"      idle connection counts (Haven)
#   DOVECOT_IDLE_CONNS=1000      the counts Dovecot is also run with (it
#                                forks a process per connection: 10,000 of
#                                them overload a 2-core machine for long)
#   PARTS="load big wake idle"   which parts run (default: all of them)
#   WAKE_SAMPLES=100             deliveries timed per server and kind (wake)
#   HASH_COST=1                  yescrypt cost of the bench accounts'
#                                password, the same hash on both servers;
#                                "default" is what `haven user add` makes
#
# The bench starts its own havend and its own Dovecot (dovecot -F with a
# config, base_dir, state_dir and Maildirs under the work folder, on free
# loopback ports) and stops both, by pid, when it ends. No system service is
# started or touched. It installs Debian's dovecot-imapd when missing.
#
# A missed goal is a finding, not a failure: the exit status is 0 unless a
# benchmark could not run (or STRICT=1).
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
umask 022

BIN=build/bench/imap/imap_load_bench
if ! make -s all "$BIN"; then
    if [ ! -x "$BIN" ] || [ ! -x bin/havend ]; then
        echo "run.sh: cannot build $BIN" >&2
        exit 1
    fi
    echo "run.sh: WARNING: make failed; running existing binaries, which may be stale" >&2
fi

# ---- Dovecot, from Debian, never started as a system service ----
if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/imap ]; then
    echo "run.sh: installing dovecot-imapd (Debian package)"
    # policy-rc.d answering 101 is Debian's way to say "do not start
    # services from package scripts": the package's own dovecot must not
    # start. Only a policy file we created is removed again.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dovecot-imapd >/dev/null ||
        { apt-get update -q >/dev/null; apt-get install -y -q dovecot-imapd >/dev/null; }
    rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { echo "run.sh: cannot install dovecot-imapd" >&2; exit 1; }
fi
DOVECOT_VERSION=$(dovecot --version 2>/dev/null | awk '{print $1}')

# ---- settings ----
if [ "${QUICK:-0}" = 1 ]; then
    mode=quick
    : "${LOAD_SECS:=6}" "${LOAD_ROUNDS:=1}" "${LOAD_WARMUP:=2}" "${IDLE_HOLD:=3}"
    : "${IDLE_CONNS:=1000}" "${WAKE_SAMPLES:=40}"
else
    mode=full
    : "${LOAD_SECS:=20}" "${LOAD_ROUNDS:=2}" "${LOAD_WARMUP:=3}" "${IDLE_HOLD:=5}"
    : "${WAKE_SAMPLES:=100}"
fi
: "${BIG_MSGS:=180000}" "${LOAD_CLIENTS:=20 50}" "${IDLE_CONNS:=1000 10000}"
: "${LOAD_SESSION_ROUNDS:=10}" "${LOAD_MIX:=}" "${HASH_COST:=1}"
: "${PARTS:=load big wake idle}"
for p in $PARTS; do
    case $p in load | big | wake | idle) ;; *) echo "run.sh: unknown part '$p' in PARTS" >&2; exit 2 ;; esac
done
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
: "${DOVECOT_IDLE_CONNS:=${IDLE_CONNS%% *}}"
ACCOUNTS=100
MSGS_PER_ACCOUNT=200
PASS=bench-pw-1
NOBODY=65534:65534 # Dovecot's mail user: its imap processes run as nobody

# Both servers and the load generator need many descriptors for 10,000
# connections; the hard limit is as far as an unprivileged raise goes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
maxfd=$(ulimit -n)
part idle || IDLE_CONNS=''
for n in $IDLE_CONNS; do
    if [ "$maxfd" != unlimited ] && [ "$maxfd" -lt $((n + 100)) ]; then
        echo "run.sh: ulimit -n is $maxfd: too low for $n connections" >&2
        exit 1
    fi
done

# A folder of our own inside the one given: it is removed at the start and
# at the end.
W=${IMAP_BENCH_DIR:-build/bench-tmp}/imap
rm -rf "$W" && mkdir -p "$W" || exit 1
W=$(cd "$W" && pwd)
fstype=$(stat -f -c %T "$W")
[ "$fstype" = tmpfs ] &&
    echo "run.sh: WARNING: $W is on tmpfs: fsync is free there, APPEND figures flatter both"
avail_kb=$(df -Pk "$W" | awk 'NR==2 {print $4}')
need_kb=$((BIG_MSGS * 12 + 2000000))
if [ "${avail_kb:-0}" -lt "$need_kb" ]; then
    echo "run.sh: need about $((need_kb / 1024)) MB free in $W (have $((avail_kb / 1024)) MB)" >&2
    exit 1
fi
# Dovecot's imap processes run as nobody and must reach their Maildirs.
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$W" 2>/dev/null; then
    echo "run.sh: $W is not reachable for the user nobody (Dovecot's mail user);" \
         "set IMAP_BENCH_DIR to a folder whose parents are world-searchable" >&2
    exit 1
fi

# The binaries are copied: another engineer's `make` must not swap havend
# under a running bench.
mkdir -p "$W/bin" && cp bin/haven bin/havend "$W/bin/" || exit 1
HAVEN="$W/bin/haven"
HAVEND="$W/bin/havend"

HPID='' DPID='' IMAP_PID=''
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    [ -n "$HPID" ] && kill -TERM "$HPID" 2>/dev/null && wait "$HPID" 2>/dev/null
    [ -n "$DPID" ] && kill -TERM "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "run.sh: work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOG="$W/run.log"
: >"$LOG"
failed=0

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 400); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

bench() {
    "$BIN" "$@" 2>&1 | tee -a "$LOG" | grep -v '^RESULT'
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "run.sh: imap_load_bench $1 $3 failed (exit $rc)" >&2
        failed=1
    fi
    return "$rc"
}

users() {
    local i
    for i in $(seq 1 $ACCOUNTS); do printf 'u%03d@bench.test\n' "$i"; done
    echo big@bench.test
}

start=$SECONDS
echo "== IMAP benchmark: Haven vs Dovecot $DOVECOT_VERSION ($mode run), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $(nproc) CPUs, $(free -g | awk '/^Mem/ {print $2}') GB RAM, $(uname -sr), work folder on $fstype"

# ---- Haven: an instance, the accounts, the same hash as Dovecot's ----
HP=$("$BIN" port) DP=$("$BIN" port)
"$HAVEN" init "$W/haven" --imap-port "$HP" --smtp-port "$("$BIN" port)" \
    --submission-port "$("$BIN" port)" --lmtp-port "$("$BIN" port)" \
    --http-port "$("$BIN" port)" --hostname localhost >/dev/null || exit 1
HCONF="$W/haven/haven.conf"
for u in $(users); do
    "$HAVEN" -c "$HCONF" user add "$u" >/dev/null || exit 1
done
HASH=$("$BIN" hash "$HASH_COST" "$PASS") || exit 1
# shellcheck disable=SC2046  # one address per word
"$BIN" sethash "$HCONF" "$HASH" $(users) || exit 1

# ---- fixtures: the same message files for both ----
t0=$SECONDS
"$BIN" maildir -n $MSGS_PER_ACCOUNT "$W/fixtures/small" >/dev/null || exit 1
mkdir -p "$W/dovecot/home" "$W/dovecot/run" "$W/dovecot/state"
: >"$W/dovecot/passwd"
for u in $(users); do
    home="$W/dovecot/home/${u%@*}"
    mkdir -p "$home"
    echo "$u:{CRYPT}$HASH:65534:65534::$home::" >>"$W/dovecot/passwd"
    [ "$u" = big@bench.test ] && continue
    "$HAVEN" -c "$HCONF" import "$u" INBOX "$W/fixtures/small" >/dev/null || exit 1
    cp -a "$W/fixtures/small" "$home/Maildir"
done
chown -R $NOBODY "$W/dovecot/home"
echo "-- fixtures: $ACCOUNTS accounts x $MSGS_PER_ACCOUNT messages on both ($((SECONDS - t0)) s)"
if part big; then
    t0=$SECONDS
    "$BIN" maildir -n "$BIG_MSGS" -U $NOBODY "$W/dovecot/home/big/Maildir" | sed 's/^/   /' || exit 1
    t1=$SECONDS
    "$HAVEN" -c "$HCONF" import big@bench.test INBOX "$W/dovecot/home/big/Maildir" | sed 's/^/   haven /' || exit 1
    echo "-- big mailbox: $BIG_MSGS messages written as Dovecot's Maildir ($((t1 - t0)) s)," \
         "then imported into Haven ($((SECONDS - t1)) s)"
fi

# ---- Dovecot: its own config, nothing from /etc/dovecot ----
DCONF="$W/dovecot/dovecot.conf"
cat >"$DCONF" <<EOF
# Written by bench/imap/run.sh: a throw-away Dovecot for the benchmark.
instance_name = haven-bench
base_dir = $W/dovecot/run
state_dir = $W/dovecot/state
log_path = $W/dovecot/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=CRYPT $W/dovecot/passwd
}
userdb {
  driver = passwd-file
  args = $W/dovecot/passwd
}
protocol imap {
  mail_max_userip_connections = 100000
}
# Dovecot is the only one touching these Maildirs: its documented
# performance setting for that case (no readdir of cur/ at every sync).
maildir_very_dirty_syncs = yes
# One imap process per connection is Dovecot's design: allow 10,000+, and
# keep a few started ahead so that a login does not wait for a fork.
default_client_limit = 15000
service imap {
  process_limit = 11000
  process_min_avail = 4
}
service anvil {
  client_limit = 15000
}
# Login processes in Dovecot's documented high-performance mode.
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DP
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = $(nproc)
}
EOF
doveconf -c "$DCONF" -n >/dev/null || { echo "run.sh: Dovecot refuses the config" >&2; exit 1; }

start_dovecot() {
    dovecot -c "$DCONF" -F >>"$W/dovecot/stdout" 2>&1 &
    DPID=$!
    wait_port "$DP" "$DPID" || { echo "run.sh: dovecot did not start" >&2; tail "$W/dovecot/dovecot.log" >&2; exit 1; }
    sleep 0.5 # process_min_avail login processes
}
stop_dovecot() {
    kill -TERM "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    DPID=''
}
start_haven() {
    "$HAVEND" -c "$HCONF" -f >>"$W/haven/havend.log" 2>&1 &
    HPID=$!
    wait_port "$HP" "$HPID" || { echo "run.sh: havend did not start" >&2; tail "$W/haven/havend.log" >&2; exit 1; }
    IMAP_PID=$(pgrep -P "$HPID" | head -1)
    [ -n "$IMAP_PID" ] || { echo "run.sh: havend has no imap child" >&2; exit 1; }
}
stop_haven() {
    kill -TERM "$HPID" 2>/dev/null && wait "$HPID" 2>/dev/null
    HPID=''
}

start_haven
start_dovecot
echo "-- havend pid $HPID (imap $IMAP_PID) on port $HP; dovecot pid $DPID on port $DP"
echo "   password hash of every bench account (both servers): yescrypt cost $HASH_COST"

COMMON=(-a "$ACCOUNTS" -u 'u%03d@bench.test' -P "$PASS")
bench prime -p "$HP" -L haven "${COMMON[@]}" -c 10 || exit 1
bench prime -p "$DP" -L dovecot "${COMMON[@]}" -c 10 || exit 1

# ---- 1. load ----
part load || LOAD_CLIENTS=''
[ -n "$LOAD_CLIENTS" ] && echo && 
    echo "== 1. load: LOGIN, SELECT, $LOAD_SESSION_ROUNDS rounds of the mix, LOGOUT; ${LOAD_SECS}s per run"
for c in $LOAD_CLIENTS; do
    for r in $(seq "$LOAD_ROUNDS"); do
        # Alternate who goes first, so that a slow minute hurts both.
        order="haven dovecot"
        [ $((r % 2)) = 0 ] && order="dovecot haven"
        for s in $order; do
            port=$HP
            [ "$s" = dovecot ] && port=$DP
            bench load -p "$port" -L "$s" "${COMMON[@]}" -c "$c" -t "$LOAD_SECS" \
                -w "$LOAD_WARMUP" -R "$LOAD_SESSION_ROUNDS" -m "$LOAD_MIX"
        done
    done
done

# ---- 2. the big mailbox ----
if part big; then
    echo
    echo "== 2. one mailbox of $BIG_MSGS messages, page cache warmed just before each server's turn"
    # This kernel drops file pages nobody touched for a few minutes, so "just
    # written" is no guarantee: each server's files are read right before.
    echo "   haven: $("$BIN" warm "$W/haven/data/accounts/bench.test/big")"
    bench big -p "$HP" -L haven -u big@bench.test -P "$PASS"
    echo "   dovecot: $("$BIN" warm "$W/dovecot/home/big/Maildir")"
    bench big -p "$DP" -L dovecot -u big@bench.test -P "$PASS"
fi

# ---- 3. idle connections ----
[ -n "$IDLE_CONNS" ] && echo &&
    echo "== 3. idle connections: LOGIN + SELECT + IDLE, held ${IDLE_HOLD}s, then DONE + NOOP on each"
mem_avail_kb() { awk '/^MemAvailable/ {print $2}' /proc/meminfo; }
for n in $IDLE_CONNS; do
    stop_haven
    start_haven
    bench idle -p "$HP" -L haven "${COMMON[@]}" -n "$n" -H "$IDLE_HOLD" \
        -M "imap=pid:$IMAP_PID" -M "all=tree:$HPID"
    # Dovecot runs a process per connection: 10,000 of them on two cores
    # starve each other (its master kills imap processes that have not
    # reported in 30 s) and slow the whole machine for half an hour, so by
    # default it runs only the smallest count; its cost per connection is
    # per process and does not depend on the count.
    case " $DOVECOT_IDLE_CONNS " in *" $n "*) ;; *)
        echo "dovecot: $n connections not run (DOVECOT_IDLE_CONNS=\"$DOVECOT_IDLE_CONNS\")"
        continue ;;
    esac
    pss=$(awk -F'\t' '$1=="RESULT" && $2=="idle" && $3=="dovecot" && $4=="all" {v=$7} END {print v+0}' "$LOG")
    if [ "${pss%.*}" -gt 0 ] && [ $(( ${pss%.*} * n * 3 / 2 )) -gt "$(mem_avail_kb)" ]; then
        echo "dovecot: $n connections skipped: ${pss} KiB PSS each would not fit in memory"
        continue
    fi
    stop_dovecot
    start_dovecot
    bench idle -p "$DP" -L dovecot "${COMMON[@]}" -n "$n" -H "$IDLE_HOLD" \
        -M "imap=children:$DPID:imap" -M "all=tree:$DPID"
done

# ---- 4. IDLE wake latency ----
if part wake; then
    echo
    echo "== 4. IDLE wake: one client IDLE on INBOX, $WAKE_SAMPLES deliveries one at a time," \
         "each timed until the idler gets * n EXISTS"
    # Fresh servers: no session of the earlier parts around.
    stop_haven
    start_haven
    stop_dovecot
    start_dovecot
    WU=u100@bench.test
    bench wake -p "$HP" -L haven -u "$WU" -P "$PASS" -n "$WAKE_SAMPLES" -i 20 -d imap
    bench wake -p "$DP" -L dovecot -u "$WU" -P "$PASS" -n "$WAKE_SAMPLES" -i 20 -d imap
    bench wake -p "$HP" -L haven -u "$WU" -P "$PASS" -n "$WAKE_SAMPLES" -i 20 \
        -d "store:$W/haven/data/accounts/bench.test/${WU%@*}"
    bench wake -p "$DP" -L dovecot -u "$WU" -P "$PASS" -n "$WAKE_SAMPLES" -i 20 -U $NOBODY \
        -d "maildir:$W/dovecot/home/${WU%@*}/Maildir"
fi

stop_haven
stop_dovecot

# ---- summary ----
echo
echo "== summary ($mode run, $(date -u '+%Y-%m-%d'), $((SECONDS - start)) s; Haven vs Dovecot $DOVECOT_VERSION)"
awk -F'\t' -v clients="$LOAD_CLIENTS" -v conns="$IDLE_CONNS" -v big="$BIG_MSGS" \
    -v mfile="$W/misses" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function row(name, h, d, vs, goal, result) {
    printf "%-46s | %-12s | %-12s | %-7s | %-9s | %s\n", name, h, d, vs, goal, result
    if (result == "MISS") misses++
}
function secs(x) { return x < 0 ? "-" : sprintf("%.3f s", x) }
$1 == "RESULT" && $2 == "load" { ops[$3 "," $4] = ops[$3 "," $4] " " $5; err[$3] += $6 }
$1 == "RESULT" && $2 == "big" { t[$3 "," $4] = $5; u[$3 "," $4] = $6; hits[$3 "," $4] = $7 }
$1 == "RESULT" && $2 == "idle" { rss[$3 "," $4 "," $5] = $6; pss[$3 "," $4 "," $5] = $7 }
$1 == "RESULT" && $2 == "idle_alive" { alive[$3 "," $4] = $5 }
$1 == "RESULT" && $2 == "idle_setup" { setup[$3 "," $4] = $5 }
$1 == "RESULT" && $2 == "wake" { wk[$3 "," $4] = 1; wp50[$3 "," $4] = $6; wp99[$3 "," $4] = $7; wto[$3 "," $4] = $10 }
END {
    misses = 0
    row("figure", "Haven", "Dovecot", "H vs D", "goal", "result")
    print "-----------------------------------------------+--------------+--------------+---------+-----------+-------"
    n = split(clients, cl, " ")
    for (i = 1; i <= n; i++) {
        h = median(ops["haven," cl[i]]); d = median(ops["dovecot," cl[i]])
        ok = h > 0 && d > 0 && h >= 1.5 * d
        row("1. load, " cl[i] " clients: commands/s", sprintf("%.0f/s", h), sprintf("%.0f/s", d),
            d > 0 ? sprintf("%.2fx", h / d) : "-", ">= 1.5x", ok ? "PASS" : "MISS")
    }
    ns = split("open1 open2 fetch_flags search_header search_header2 search_body search_body2 store_seen expunge_half", st, " ")
    name["open1"] = "first SELECT (LOGIN + SELECT)"
    name["open2"] = "second SELECT (LOGIN + SELECT)"
    name["fetch_flags"] = "UID FETCH 1:* (FLAGS)"
    name["search_header"] = "UID SEARCH HEADER Subject"
    name["search_header2"] = "  the same search again"
    name["search_body"] = "SEARCH BODY"
    name["search_body2"] = "  the same search again"
    name["store_seen"] = "STORE 1:* +FLAGS (\\Seen)"
    name["expunge_half"] = "EXPUNGE half (STORE odd + EXPUNGE)"
    for (i = 1; i <= ns; i++) {
        step = st[i]
        for (w = 1; w <= 2; w++) {
            srv = w == 1 ? "haven" : "dovecot"
            if (step == "open1") v = t[srv ",login_first"] + t[srv ",select_first"]
            else if (step == "open2") v = t[srv ",login_second"] + t[srv ",select_second"]
            else if (step == "expunge_half") v = t[srv ",store_odd"] + t[srv ",expunge"]
            else v = (srv "," step) in t ? t[srv "," step] : -1
            if (w == 1) h = v; else d = v
        }
        if (h <= 0 && d <= 0) continue
        info = step ~ /^search_.*2$/
        ok = h > 0 && d > 0 && d >= 2 * h
        row("2. " name[step], secs(h), secs(d), h > 0 ? sprintf("%.2fx", d / h) : "-",
            info ? "(info)" : ">= 2x", info ? "-" : (ok ? "PASS" : "MISS"))
    }
    n = split(conns, cn, " ")
    for (i = 1; i <= n; i++) {
        h = ("haven,imap," cn[i]) in rss ? rss["haven,imap," cn[i]] : -1
        d = ("dovecot,imap," cn[i]) in rss ? rss["dovecot,imap," cn[i]] : -1
        row("3. idle RSS per connection, " cn[i] " conns", h < 0 ? "-" : sprintf("%.1f KiB", h),
            d < 0 ? "not run" : sprintf("%.0f KiB", d), (h > 0 && d > 0) ? sprintf("%.3fx", h / d) : "-",
            "< 64 KiB", h >= 0 && h < 64 ? "PASS" : "MISS")
        a = ("haven," cn[i]) in alive ? alive["haven," cn[i]] : 0
        row("   all " cn[i] " still served (DONE + NOOP)", a "/" cn[i],
            ("dovecot," cn[i]) in alive ? alive["dovecot," cn[i]] "/" cn[i] : "not run", "",
            "all", a == cn[i] ? "PASS" : "MISS")
        hs = ("haven," cn[i]) in setup ? setup["haven," cn[i]] : -1
        ds = ("dovecot," cn[i]) in setup ? setup["dovecot," cn[i]] : -1
        row("   time to set them up", hs < 0 ? "-" : sprintf("%.1f s", hs),
            ds < 0 ? "not run" : sprintf("%.1f s", ds), (hs > 0 && ds > 0) ? sprintf("%.2fx", ds / hs) : "-",
            "(info)", "-")
    }
    split("imap local", wm, " ")
    wname["imap"] = "IMAP APPEND"
    wname["local"] = "local delivery"
    for (i = 1; i <= 2; i++) {
        k = wm[i]
        if (!(("haven," k) in wk) && !(("dovecot," k) in wk)) continue
        hk = ("haven," k) in wk; dk = ("dovecot," k) in wk
        h = hk ? wp50["haven," k] : -1; d = dk ? wp50["dovecot," k] : -1
        row("4. IDLE wake p50, " wname[k], h < 0 ? "-" : sprintf("%.1f ms", h), d < 0 ? "-" : sprintf("%.1f ms", d),
            (h > 0 && d > 0) ? sprintf("%.2fx", d / h) : "-", "(info)", "-")
        h = hk ? wp99["haven," k] : -1; d = dk ? wp99["dovecot," k] : -1
        to = hk ? wto["haven," k] : 1
        row("4. IDLE wake p99, " wname[k], h < 0 ? "-" : sprintf("%.1f ms", h), d < 0 ? "-" : sprintf("%.1f ms", d),
            (h > 0 && d > 0) ? sprintf("%.2fx", d / h) : "-", "< 100 ms", h >= 0 && h < 100 && to == 0 ? "PASS" : "MISS")
        if ((hk && wto["haven," k] > 0) || (dk && wto["dovecot," k] > 0))
            printf "WARNING: IDLE wake, %s: deliveries never announced within 10 s: Haven %d, Dovecot %d\n", k,
                hk ? wto["haven," k] : 0, dk ? wto["dovecot," k] : 0
    }
    # Both servers must have done the same work.
    split("fetch_flags search_header search_body store_seen expunge", chk, " ")
    for (i = 1; i <= 5; i++) {
        s = chk[i]
        if (("haven," s) in u && ("dovecot," s) in u &&
            (u["haven," s] != u["dovecot," s] || hits["haven," s] != hits["dovecot," s]))
            printf "WARNING: %s: Haven answered %s responses / %s hits, Dovecot %s / %s\n", s,
                u["haven," s], hits["haven," s], u["dovecot," s], hits["dovecot," s]
    }
    if (err["haven"] + err["dovecot"] > 0)
        printf "WARNING: load phase errors: Haven %d, Dovecot %d (see the log above)\n", err["haven"], err["dovecot"]
    print misses > mfile
}' "$LOG"
misses=$(cat "$W/misses" 2>/dev/null)
echo "${misses:-?} goal(s) missed"
echo "(2.: $BIG_MSGS messages; H vs D is Dovecot's time / Haven's. 3.: Dovecot's figure is RSS summed"
echo " over its imap processes, one per connection; PSS and all its processes are in the log above)"
[ "$failed" = 0 ] || exit 1
[ "${STRICT:-0}" = 1 ] && [ "${misses:-1}" != 0 ] && exit 1
exit 0
