#!/usr/bin/env bash
# bench/smtp/run.sh - Haven's SMTP intake, queue and LMTP delivery against
# Postfix, side by side in the same run, end to end: from smtp-source's
# first connection until the last message is in the recipient's mailbox.
# docs/bench-smtp.md says what each figure measures and how to read it.
#
#   bench/smtp/run.sh            full run (about 6 minutes on a quiet machine)
#   QUICK=1 bench/smtp/run.sh    fewer messages, one round (about 2 minutes)
#   KEEP=1                       keep the work folder (instances, logs)
#   STRICT=1                     exit 1 when a goal is missed
#   SMTP_BENCH_DIR=folder        both servers live in folder/smtp (default
#                                build/bench-tmp/smtp; a disk, not tmpfs)
#   MSGS_4K, MSGS_100K           messages per throughput run and size
#   ROUNDS                       throughput runs per server and size
#                                (interleaved; the table shows the median)
#   SESSIONS=20                  smtp-source -s: parallel SMTP sessions
#   SPREAD=1                     accounts a throughput run's messages go to:
#                                SPREAD smtp-source processes, each with
#                                SESSIONS/SPREAD sessions, to one account each
#   SOURCE_OPTS=                 more smtp-source options, the same for
#                                both (e.g. -d: several messages per
#                                connection)
#   LAT_SECS                     seconds of the paced latency run
#   LAT_RATE                     its rate in msgs/s (default: half of each
#                                server's own 4 KiB end-to-end peak)
#   SERVERS="haven postfix"      which servers to run (one alone: no ratios)
#
# The bench starts its own havend and its own Postfix (`postfix -c DIR
# start` with a main.cf and master.cf written into the work folder: own
# queue_directory, data_directory, log file, a loopback port, delivery to
# Maildirs by Postfix's virtual(8) agent) and stops both when it ends.
# /etc/postfix is read for nothing but the daemons' paths; no system
# service is started, stopped or reconfigured. Postfix's master must start
# as root (it drops to mail_owner = postfix); the bench refuses to run
# otherwise.
#
# A missed goal is a finding, not a failure: the exit status is 0 unless a
# benchmark could not run (or STRICT=1).
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
umask 022

if ! make -s all; then
    [ -x bin/havend ] || { echo "run.sh: cannot build bin/havend" >&2; exit 1; }
    echo "run.sh: WARNING: make failed; running existing binaries, which may be stale" >&2
fi
PATH=$PATH:/usr/sbin
if ! command -v smtp-source >/dev/null; then
    scripts/deps.sh || { echo "run.sh: cannot install postfix (smtp-source)" >&2; exit 1; }
fi
for c in smtp-source postfix postconf; do
    command -v "$c" >/dev/null || { echo "run.sh: $c missing (Debian package postfix; scripts/deps.sh)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
    echo "run.sh: Postfix's master starts as root and drops to its mail_owner;" \
         "run the bench as root" >&2
    exit 1
fi
id postfix >/dev/null 2>&1 || { echo "run.sh: no user postfix (the postfix package makes it)" >&2; exit 1; }
POSTFIX_VERSION=$(postconf -d -h mail_version 2>/dev/null)
PY=bench/smtp/smtp_bench.py

# ---- settings ----
if [ "${QUICK:-0}" = 1 ]; then
    mode=quick
    : "${MSGS_4K:=3000}" "${MSGS_100K:=500}" "${ROUNDS:=1}" "${LAT_SECS:=5}"
else
    mode=full
    : "${MSGS_4K:=10000}" "${MSGS_100K:=2000}" "${ROUNDS:=2}" "${LAT_SECS:=15}"
fi
: "${SESSIONS:=20}" "${SOURCE_OPTS:=}" "${LAT_RATE:=}" "${SERVERS:=haven postfix}" "${SPREAD:=1}"
[ "$SPREAD" -ge 1 ] && [ "$SPREAD" -le "$SESSIONS" ] ||
    { echo "run.sh: SPREAD must be 1..SESSIONS" >&2; exit 1; }
has() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }
NOBODY=65534:65534 # owner of Postfix's Maildirs (virtual_uid_maps)

W=${SMTP_BENCH_DIR:-build/bench-tmp}/smtp
rm -rf "$W" && mkdir -p "$W" || exit 1
W=$(cd "$W" && pwd)
fstype=$(stat -f -c %T "$W")
[ "$fstype" = tmpfs ] &&
    echo "run.sh: WARNING: $W is on tmpfs: fsync is free there, which flatters both"
avail_kb=$(df -Pk "$W" | awk 'NR==2 {print $4}')
need_kb=$(( (MSGS_4K * 6 + MSGS_100K * 110) * ROUNDS * 3 + 500000 ))
if [ "${avail_kb:-0}" -lt "$need_kb" ]; then
    echo "run.sh: need about $((need_kb / 1024)) MB free in $W (have $((avail_kb / 1024)) MB)" >&2
    exit 1
fi
# Postfix's virtual agent delivers as nobody and must reach its Maildirs.
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$W" 2>/dev/null; then
    echo "run.sh: $W is not reachable for the user nobody (Postfix's delivery user here);" \
         "set SMTP_BENCH_DIR to a folder whose parents are world-searchable" >&2
    exit 1
fi

# The binaries are copied: another engineer's `make` must not swap havend
# under a running bench.
mkdir -p "$W/bin" && cp bin/haven bin/havend "$W/bin/" || exit 1
HAVEN=$W/bin/haven
HAVEND=$W/bin/havend
HPID='' PFDIR="$W/postfix"
cleanup() {
    [ -n "$HPID" ] && kill -TERM "$HPID" 2>/dev/null && wait "$HPID" 2>/dev/null
    [ -f "$PFDIR/etc/main.cf" ] && [ -f "$PFDIR/queue/pid/master.pid" ] &&
        postfix -c "$PFDIR/etc" stop >/dev/null 2>&1
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
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
port() { python3 "$PY" port; }

bench() {
    python3 "$PY" "$@" 2>&1 | tee -a "$LOG" | grep -v '^RESULT'
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "run.sh: smtp_bench.py $1 ($*) failed (exit $rc)" >&2
        failed=1
    fi
    return "$rc"
}

start=$SECONDS
echo "== SMTP benchmark: Haven vs Postfix $POSTFIX_VERSION ($mode run), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $(nproc) CPUs, $(free -g | awk '/^Mem/ {print $2}') GB RAM, $(uname -sr), work folder on $fstype"

# ---- Haven ----
PW=bench-pw-1
HSMTP=$(port) HIMAP=$(port)
spread_accounts() { local i; for i in $(seq "$SPREAD"); do printf '%s-%d ' "$1" "$i"; done; }
ACCOUNTS="warm-1 $(spread_accounts lat)$(spread_accounts tp4k)$(spread_accounts tp100k)"
start_haven() {
"$HAVEN" init "$W/haven" --imap-port "$HIMAP" --smtp-port "$HSMTP" \
    --submission-port "$(port)" --lmtp-port "$(port)" --http-port "$(port)" \
    --hostname localhost >/dev/null || exit 1
HCONF="$W/haven/haven.conf"
# smtp-source sends everything from 127.0.0.1: the per-address message
# rate limit (60,000 a minute by default) would measure the limit, not the
# server. Postfix has no such limit by default either.
sed -i '/^smtp_client_max_messages_per_minute/d' "$HCONF"
echo "smtp_client_max_messages_per_minute = 0" >>"$HCONF"
for u in $ACCOUNTS; do
    echo "$PW" | "$HAVEN" -c "$HCONF" user add "$u@bench.test" --password-stdin >/dev/null || exit 1
done
"$HAVEND" -c "$HCONF" -f >>"$W/haven/havend.log" 2>&1 &
HPID=$!
wait_port "$HIMAP" "$HPID" || { echo "run.sh: havend did not start" >&2; tail "$W/haven/havend.log" >&2; exit 1; }
if ! wait_port "$HSMTP" "$HPID"; then
    echo "run.sh: havend serves no SMTP on port $HSMTP (is the smtp service built?)" >&2
    tail "$W/haven/havend.log" >&2
    exit 1
fi
}

# ---- Postfix: its own config, queue and Maildirs ----
PSMTP=$(port)
start_postfix() {
mkdir -p "$PFDIR/etc" "$PFDIR/queue" "$PFDIR/data" "$PFDIR/mail" || exit 1
chown postfix "$PFDIR/data"
cat >"$PFDIR/etc/main.cf" <<EOF
# Written by bench/smtp/run.sh: a throw-away Postfix for the benchmark.
# Everything not set here is Postfix's default, fsync behaviour included
# (the queue file is fsync'd before the 250, each Maildir file before it
# is linked into new/).
compatibility_level = 3.6
queue_directory = $PFDIR/queue
data_directory = $PFDIR/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PFDIR/maillog
maillog_file_prefixes = $PFDIR
myhostname = localhost
mydomain = localdomain
myorigin = localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
alias_maps =
alias_database =
local_recipient_maps =
# Delivery: Postfix's own virtual(8) agent into one Maildir per account
# (a trailing / makes it a Maildir), as nobody.
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $PFDIR/mail
virtual_mailbox_maps = texthash:$PFDIR/etc/vmailbox
virtual_uid_maps = static:${NOBODY%%:*}
virtual_gid_maps = static:${NOBODY##*:}
EOF
: >"$PFDIR/etc/vmailbox"
for u in $ACCOUNTS; do
    echo "$u@bench.test $u/" >>"$PFDIR/etc/vmailbox"
    mkdir -p "$PFDIR/mail/$u/new" "$PFDIR/mail/$u/cur" "$PFDIR/mail/$u/tmp"
done
chown -R $NOBODY "$PFDIR/mail"
# Debian's master.cf services, unchrooted (the chroot would need copies of
# /etc files inside this queue directory), with smtpd on our port only.
cat >"$PFDIR/etc/master.cf" <<EOF
127.0.0.1:$PSMTP inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
if ! postfix -c "$PFDIR/etc" start >>"$PFDIR/start.log" 2>&1 || ! wait_port "$PSMTP" ""; then
    echo "run.sh: postfix did not start:" >&2
    tail "$PFDIR/start.log" "$PFDIR/maillog" >&2 2>/dev/null
    exit 1
fi
}

has haven && { start_haven; echo "-- havend pid $HPID, smtp port $HSMTP, imap port $HIMAP"; }
has postfix && { start_postfix; echo "-- postfix master pid $(tr -d ' ' <"$PFDIR/queue/pid/master.pid"), smtp port $PSMTP"; }

watch_of() { # server account
    if [ "$1" = haven ]; then echo "imap:$HIMAP:$2@bench.test:$PW"; else echo "maildir:$PFDIR/mail/$2"; fi
}
port_of() { if [ "$1" = haven ]; then echo "$HSMTP"; else echo "$PSMTP"; fi; }

throughput() { # server account-prefix size count tag spread
    local s=$1 acct=$2 size=$3 n=$4 tag=$5 k=$6 i watches=() cmd
    if [ "$k" = 1 ]; then
        watches=(--watch "$(watch_of "$s" "$acct-1")")
        # shellcheck disable=SC2086  # SOURCE_OPTS is a list of options
        cmd=(smtp-source -s "$SESSIONS" -l "$size" -m "$n" $SOURCE_OPTS
             -f sender@client.test -t "$acct-1@bench.test" "127.0.0.1:$(port_of "$s")")
    else
        # k smtp-source processes, one account each; the exit status is
        # the first failure's.
        local script='rc=0; pids=()'
        for i in $(seq "$k"); do
            watches+=(--watch "$(watch_of "$s" "$acct-$i")")
            script+="; smtp-source -s $((SESSIONS / k)) -l $size -m $((n / k)) $SOURCE_OPTS"
            script+=" -f sender@client.test -t $acct-$i@bench.test 127.0.0.1:$(port_of "$s") & pids+=(\$!)"
        done
        script+='; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc'
        cmd=(bash -c "$script")
        n=$(( n / k * k ))
    fi
    bench throughput --label "$s" --size-label "$tag" "${watches[@]}" --count "$n" -- "${cmd[@]}"
}

# ---- 0. warm-up: processes started, caches filled ----
echo
echo "== 0. warm-up: 500 messages of 4 KiB to each server (not counted)"
for s in $SERVERS; do throughput "$s" warm 4096 500 warmup 1 >/dev/null; done
[ "$failed" = 0 ] || { echo "run.sh: warm-up failed; see $LOG" >&2; tail -5 "$LOG" >&2; exit 1; }

# ---- 1. throughput ----
echo
echo "== 1. throughput: smtp-source -s $SESSIONS $SOURCE_OPTS to $SPREAD account(s), until the last message is in the mailbox"
for size in 4096 102400; do
    n=$MSGS_4K acct=tp4k
    [ "$size" = 102400 ] && n=$MSGS_100K acct=tp100k
    for r in $(seq "$ROUNDS"); do
        order=$SERVERS
        [ $((r % 2)) = 0 ] && order=$(echo "$SERVERS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
        for s in $order; do
            throughput "$s" "$acct" "$size" "$n" "$size" "$SPREAD"
        done
    done
done

median_of() { # label size
    awk -F'\t' -v l="$1" -v s="$2" '$1=="RESULT" && $2=="throughput" && $3==l && $4==s {print $8}' "$LOG" |
        sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# ---- 2. latency at half the peak rate ----
echo
echo "== 2. latency: one message every 1/R s over $SESSIONS connections to $SPREAD account(s) for ${LAT_SECS}s, 250 -> in the mailbox"
for s in $SERVERS; do
    rate=$LAT_RATE
    if [ -z "$rate" ]; then
        peak=$(median_of "$s" 4096)
        rate=$(awk -v p="$peak" 'BEGIN {r = int(p / 2); print (r < 1 ? 1 : r)}')
    fi
    targets=()
    for a in $(spread_accounts lat); do
        targets+=(--watch "$(watch_of "$s" "$a")" --rcpt "$a@bench.test")
    done
    bench latency --label "$s" "${targets[@]}" --port "$(port_of "$s")" \
        --rate "$rate" --secs "$LAT_SECS" --size 4096 --sessions "$SESSIONS"
done

# Both must have delivered each message exactly once: the mailboxes hold
# what was accepted, no more (a duplicate would flatter a server).
for s in $SERVERS; do
    for acct in warm-1 $(spread_accounts tp4k) $(spread_accounts tp100k); do
        want=500
        case $acct in
        tp4k-*) want=$((MSGS_4K / SPREAD * ROUNDS)) ;;
        tp100k-*) want=$((MSGS_100K / SPREAD * ROUNDS)) ;;
        esac
        got=$(python3 "$PY" count --watch "$(watch_of "$s" "$acct")")
        if [ "$got" != "$want" ]; then
            echo "WARNING: $s: $acct@bench.test holds $got messages, $want were sent"
            failed=1
        fi
    done
done
if grep -q 'status=deferred\|status=bounced' "$PFDIR/maillog" 2>/dev/null; then
    echo "WARNING: Postfix deferred or bounced messages (see $PFDIR/maillog)"
fi

# ---- summary ----
echo
echo "== summary ($mode run, $(date -u '+%Y-%m-%d'), $((SECONDS - start)) s; Haven vs Postfix $POSTFIX_VERSION)"
awk -F'\t' -v mfile="$W/misses" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function row(name, h, p, vs, goal, result) {
    printf "%-44s | %-12s | %-12s | %-7s | %-9s | %s\n", name, h, p, vs, goal, result
    if (result == "MISS") misses++
}
$1 == "RESULT" && $2 == "throughput" { e2e[$3 "," $4] = e2e[$3 "," $4] " " $8; intake[$3 "," $4] = intake[$3 "," $4] " " ($5 / $6) }
$1 == "RESULT" && $2 == "latency" { p99[$3] = $8; p50[$3] = $6; rate[$3] = $5; n[$3] = $10; lost[$3] = $11 + $12 }
END {
    misses = 0
    row("figure", "Haven", "Postfix", "H vs P", "goal", "result")
    print "---------------------------------------------+--------------+--------------+---------+-----------+-------"
    split("4096 102400", sz, " ")
    for (i = 1; i <= 2; i++) {
        name = sz[i] == 4096 ? "4 KiB" : "100 KiB"
        h = median(e2e["haven," sz[i]]); p = median(e2e["postfix," sz[i]])
        ok = h > 0 && p > 0 && h >= 3 * p
        row("1. " name ": msgs/s into the mailbox", h < 0 ? "-" : sprintf("%.0f/s", h),
            p < 0 ? "-" : sprintf("%.0f/s", p), (h > 0 && p > 0) ? sprintf("%.2fx", h / p) : "-",
            ">= 3x", ok ? "PASS" : "MISS")
        h = median(intake["haven," sz[i]]); p = median(intake["postfix," sz[i]])
        row("   " name ": msgs/s accepted (250)", h < 0 ? "-" : sprintf("%.0f/s", h),
            p < 0 ? "-" : sprintf("%.0f/s", p), (h > 0 && p > 0) ? sprintf("%.2fx", h / p) : "-",
            "(info)", "-")
    }
    hp = ("haven" in p99) ? p99["haven"] : -1; pp = ("postfix" in p99) ? p99["postfix"] : -1
    row("2. p99 250 -> mailbox at half peak, 4 KiB", hp < 0 ? "-" : sprintf("%.1f ms", hp),
        pp < 0 ? "-" : sprintf("%.1f ms", pp), "", "< 50 ms", (hp >= 0 && hp < 50 && lost["haven"] == 0) ? "PASS" : "MISS")
    row("   rate (half of each one'"'"'s 4 KiB peak)", ("haven" in rate) ? rate["haven"] "/s" : "-",
        ("postfix" in rate) ? rate["postfix"] "/s" : "-", "", "(info)", "-")
    row("   p50", ("haven" in p50) ? sprintf("%.1f ms", p50["haven"]) : "-",
        ("postfix" in p50) ? sprintf("%.1f ms", p50["postfix"]) : "-", "", "(info)", "-")
    print misses > mfile
}' "$LOG"
misses=$(cat "$W/misses" 2>/dev/null)
echo "${misses:-?} goal(s) missed"
echo "(msgs/s into the mailbox: from smtp-source's start until the last message is in the mailbox;"
echo " accepted: until smtp-source had its last 250. Medians of $ROUNDS run(s) per server and size.)"
[ "$failed" = 0 ] || exit 1
[ "${STRICT:-0}" = 1 ] && [ "${misses:-1}" != 0 ] && exit 1
exit 0
