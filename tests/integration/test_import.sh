#!/usr/bin/env bash
# `haven import` and `haven export` end to end, on a throwaway instance:
#   - a 500-message mbox written exactly as export writes mboxrd comes back
#     out of export byte for byte;
#   - an mbox with odd shapes (CRLF, mboxo quoting, dates only in Date:,
#     NUL bytes, no final newline) survives import -> export -> import;
#   - a Maildir++ tree (flags, mtimes, subfolders) goes in with --recursive
#     and comes out with the same bodies, flags and dates;
#   - over-size messages are skipped and reported, --skip resumes;
#   - bad input (unknown account, missing file, not an mbox, not a Maildir)
#     gives a non-zero exit and one line on stderr;
#   - `haven verify` finds the account sound afterwards.
# HAVEN may name another haven binary (default: bin/haven).
set -eu
cd "$(dirname "$0")/../.."
HAVEN=${HAVEN:-bin/haven}
case "$HAVEN" in /*) ;; *) HAVEN="$PWD/$HAVEN" ;; esac
T=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT; [ -n "${KEEP:-}" ] && echo "temp: $T"
cd "$T"

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

cat > haven.conf <<'EOF'
data_dir = data
directory = sqlite:directory.sqlite
EOF
h() { "$HAVEN" -c haven.conf "$@"; }

# Runs a command that must fail: non-zero exit, exactly one line on stderr
# that contains the expected words.
expect_fail() {
    local want=$1; shift
    if "$@" >out.txt 2>err.txt; then fail "should have failed: $*"; fi
    [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "not one line on stderr: $*"; }
    grep -q -- "$want" err.txt || { cat err.txt; fail "stderr lacks '$want': $*"; }
    echo "   ok: $(cat err.txt)"
}

step "account"
echo secret | h user add x@example.org --password-stdin >/dev/null

step "generate inputs"
python3 - <<'PY'
import os, random, time
random.seed(20240102)
WD = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MN = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
def asctime(t):
    g = time.gmtime(t)
    return "%s %s %2d %02d:%02d:%02d %d" % (WD[g.tm_wday], MN[g.tm_mon - 1], g.tm_mday,
                                             g.tm_hour, g.tm_min, g.tm_sec, g.tm_year)
def body_lines(i):
    lines = [b"Subject: message %d" % i, b"Message-Id: <%d@example.org>" % i, b""]
    for _ in range(random.randint(0, 30)):
        lines.append(random.choice([
            b"plain text", b"From the middle of a line", b">From quoted once",
            b">>From quoted twice", b"", b"x" * random.randint(1, 5000), b"a\x00b nul",
            b"tab\there", b"mid\rcr", "caf\u00e9 \u65e5\u672c".encode(), b"From", b">From",
            b"=?utf-8?q?odd=20header?=", b" "]))
    return lines
def quote(line):
    return b">" + line if line.lstrip(b">").startswith(b"From ") else line

# 1. canonical mboxrd: export must reproduce it byte for byte
with open("canonical.mbox", "wb") as f:
    for i in range(500):
        t = random.randint(0, 4102444799)
        lines = body_lines(i)
        sender = "MAILER-DAEMON"
        if i % 7 == 0:
            sender = "bounce-%d@example.net" % i
            lines.insert(0, b"Return-Path: <%s>" % sender.encode())
        f.write(("From %s %s\n" % (sender, asctime(t))).encode())
        for l in lines:
            f.write(quote(l) + b"\n")
        f.write(b"\n")

# 2. odd shapes: CRLF, mboxo, dates only in Date:, no final newline
with open("odd.mbox", "wb") as f:
    f.write(b"From a@example.org Tue Jan  2 15:04:05 2024\r\nSubject: crlf\r\n\r\nline\r\n\r\n")
    f.write(b"From someone\nDate: Wed, 3 Jan 2024 10:00:00 +0100\nSubject: date header\n\n"
            b">From mboxo quoted\nbody\x00nul\n\n")
    f.write(b"From b Thu Jan  4 00:00:00 2024\nSubject: cr at end\n\nx\r\r\ny\n\n")
    f.write(b"From c Fri Jan  5 00:00:00 2024\nSubject: last\n\nno final newline")

# 3. a Maildir++ tree
def maildir(d):
    for s in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(d, s), exist_ok=True)
flags_cycle = ["", "S", "RS", "FS", "DS", "ST", "DFRST"]
for folder in ["Maildir", "Maildir/.Sub", "Maildir/.Sub.Folder", "Maildir/.Entw&APw-rfe"]:
    maildir(folder)
    for k in range(20):
        t = 1700000000 + k * 3600 + len(folder)
        flags = flags_cycle[k % len(flags_cycle)]
        where = "new" if flags == "" else "cur"
        name = "%d.M%dP1.host%s" % (t, k, "" if where == "new" else ":2," + flags)
        p = os.path.join(folder, where, name)
        with open(p, "wb") as f:
            f.write(b"Subject: %s %d\n\n" % (folder.encode(), k))
            for l in body_lines(k):
                f.write(l + (b"\r\n" if k % 2 else b"\n"))
        os.utime(p, (t, t))

# 4. one message over 1 KiB between small ones
with open("big.mbox", "wb") as f:
    f.write(b"From a Tue Jan  2 15:04:05 2024\n\nsmall one\n\n")
    f.write(b"From b Tue Jan  2 15:04:05 2024\n\n" + b"y" * 3000 + b"\n\n")
    f.write(b"From c Tue Jan  2 15:04:05 2024\n\nsmall two\n\n")
open("empty.mbox", "wb").close()
with open("notmbox.txt", "wb") as f:
    f.write(b"Subject: hello\n\nnot an mbox\n")
PY

step "import canonical.mbox"
h import x@example.org INBOX canonical.mbox > out.txt
grep -q "^imported 500 messages (.* bytes) into x@example.org/INBOX$" out.txt || { cat out.txt; fail "summary"; }

step "export INBOX as mboxrd: byte-identical to the input"
h export x@example.org INBOX --mbox inbox.mbox > /dev/null
cmp canonical.mbox inbox.mbox || fail "export differs from the canonical input"
h export x@example.org INBOX --mbox - > stdout.mbox 2> /dev/null
cmp canonical.mbox stdout.mbox || fail "export to stdout differs"

step "odd mbox: import -> export -> import -> export is stable"
h import x@example.org Odd odd.mbox > /dev/null
h export x@example.org Odd --mbox odd1.mbox > /dev/null
h import x@example.org Odd2 odd1.mbox > /dev/null
h export x@example.org Odd2 --mbox odd2.mbox > /dev/null
cmp odd1.mbox odd2.mbox || fail "odd round trip differs"
grep -q "^From MAILER-DAEMON Wed Jan  3 09:00:00 2024$" odd1.mbox || fail "Date: header not used"
grep -q "^>From mboxo quoted$" odd1.mbox || fail "quoting"
python3 - <<'PY' || fail "odd bodies"
d = open("odd1.mbox", "rb").read()
assert b"body\x00nul\n" in d, "NUL"
assert b"x\r\r\ny\n" in d, "CR before CRLF"
assert d.endswith(b"no final newline\n\n"), "final newline"
assert b"\r\n" not in d.replace(b"x\r\r\n", b""), "CRLF left"
PY

step "Maildir++ import with --recursive"
h import x@example.org Archive Maildir --recursive > out.txt
grep -q "^imported 80 messages" out.txt || { cat out.txt; fail "maildir summary"; }
h export x@example.org Archive/Sub/Folder --mbox /dev/null > out.txt
grep -q "^exported 20 messages" out.txt || fail "subfolder Archive/Sub/Folder"
h export x@example.org "Archive/Entw$(printf '\303\274')rfe" --mbox /dev/null > out.txt \
    || fail "modified UTF-7 folder name not decoded"
# Exporting into a device or a pipe writes into it: it is not replaced by a
# regular file (as root, a rename over /dev/null would break the machine).
[ -c /dev/null ] || fail "export replaced /dev/null"
mkfifo fifo
cat fifo > from_fifo.mbox &
h export x@example.org Archive/Sub/Folder --mbox fifo > out.txt || fail "export into a FIFO"
wait
[ -p fifo ] || fail "export replaced the FIFO"
[ "$(grep -c '^From ' from_fifo.mbox)" -eq 20 ] || fail "FIFO got $(grep -c '^From ' from_fifo.mbox) messages"

step "Maildir export: same bodies, flags and dates"
h export x@example.org Archive --maildir md1 > /dev/null
h import x@example.org Archive2 md1 > /dev/null
h export x@example.org Archive2 --maildir md2 > /dev/null
python3 - <<'PY' || fail "maildir round trip"
import os
def load(d, crlf):
    out = []
    for sub in ("cur", "new"):
        for n in os.listdir(os.path.join(d, sub)):
            p = os.path.join(d, sub, n)
            b = open(p, "rb").read()
            if crlf:  # what import stores: bare LF -> CRLF
                b = b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            flags = n.split(":2,")[1] if ":2," in n else ""
            out.append((int(os.stat(p).st_mtime), "".join(sorted(flags)), b))
    return sorted(out)
src, one, two = load("Maildir", True), load("md1", True), load("md2", True)
assert len(src) == 20 and src == one == two, "differ"
PY

step "whole account as Maildir++ and back"
h export x@example.org --maildir tree > /dev/null
[ -d tree/cur ] && [ -d tree/.Archive.Sub.Folder/cur ] && [ -f tree/.Odd/maildirfolder ] \
    || fail "Maildir++ layout"
echo secret | h user add y@example.org --password-stdin > /dev/null
h import y@example.org INBOX tree --recursive > /dev/null
h export y@example.org INBOX --mbox y-inbox.mbox > /dev/null
h export y@example.org Archive/Sub --mbox y-sub.mbox > /dev/null
h export x@example.org Archive/Sub --mbox x-sub.mbox > /dev/null
# A Maildir's only order is its file names' time stamps (the internal
# dates here), so compare the messages as sets.
python3 - <<'PY' || fail "mailboxes through Maildir++ differ"
def msgs(path):
    d = open(path, "rb").read()
    parts = d[5:-2].split(b"\n\nFrom ") if d else []
    return sorted(parts)
assert msgs("canonical.mbox") == msgs("y-inbox.mbox"), "INBOX"
assert len(msgs("x-sub.mbox")) == 20 and msgs("x-sub.mbox") == msgs("y-sub.mbox"), "Archive/Sub"
PY

step "over-size messages are skipped, reported, and the rest imported"
set +e
h import x@example.org Big big.mbox --max-size 1K > out.txt 2> err.txt
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "over-size import exit $rc"
grep -q "big.mbox: message 2 at byte 44: 3004 bytes, over the limit of 1024; skipped" err.txt \
    || { cat err.txt; fail "over-size report"; }
grep -q "skipped 1 message" err.txt || fail "skip summary"
grep -q "^imported 2 messages" out.txt || fail "the small ones"

step "--skip continues where an import stopped"
h import x@example.org Resume canonical.mbox --skip 490 > out.txt
grep -q "^imported 10 messages" out.txt || { cat out.txt; fail "--skip"; }
h export x@example.org Resume --mbox resume.mbox > /dev/null
python3 - <<'PY' || fail "--skip took the wrong messages"
a = open("canonical.mbox", "rb").read().split(b"\n\nFrom ")
b = open("resume.mbox", "rb").read().split(b"\n\nFrom ")
assert len(a) == 500 and len(b) == 10, (len(a), len(b))
assert a[491:] == b[1:] and b"From " + a[490] == b[0]
PY

step "empty mbox, standard input"
h import x@example.org Empty empty.mbox > out.txt
grep -q "^imported 0 messages" out.txt || fail "empty mbox"
h import x@example.org Stdin - < odd.mbox > out.txt
grep -q "^imported 4 messages" out.txt || fail "stdin"

step "errors: non-zero exit, one line"
expect_fail "no such account nobody@example.org" h import nobody@example.org INBOX canonical.mbox
expect_fail "missing.mbox: No such file" h import x@example.org INBOX missing.mbox
expect_fail "not an mbox" h import x@example.org INBOX notmbox.txt
mkdir plain
expect_fail "not a Maildir" h import x@example.org INBOX plain
expect_fail "not an mbox" h import x@example.org INBOX - < notmbox.txt
expect_fail "no such account nobody@example.org" h export nobody@example.org INBOX --mbox -
expect_fail "has no mailbox Nope" h export x@example.org Nope --mbox -
expect_fail "not empty" h export x@example.org INBOX --maildir md1
# nothing was written by the failed imports
h export x@example.org INBOX --mbox inbox-after.mbox > /dev/null
cmp canonical.mbox inbox-after.mbox || fail "a failed import changed INBOX"

step "verify"
h verify x@example.org
h verify y@example.org
echo "all import/export checks passed"
