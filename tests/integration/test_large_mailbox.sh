#!/usr/bin/env bash
# test_large_mailbox.sh - the 180,000-message folder that killed MoveServer
# (seeds: a whole-folder copy timed out) as a fixture: import it, verify it,
# rebuild its index from the log, verify again, export it, and check every
# step sees all 180,000 messages. Nothing here may have a size-dependent
# limit; the durations are printed so a slowdown shows up in the test log.
set -eu
cd "$(dirname "$0")/../.."

N=180000
root=$PWD
# 180,000 blob files take minutes just to create and delete on a busy disk,
# and this test is about scale (streaming, no size limits), not about fsync
# (the store's crash tests are). So, unless TMPDIR says where, use a tmpfs
# when there is one with room for the ~1 GB this needs.
base=${TMPDIR:-}
if [ -z "$base" ] && [ -d /dev/shm ] && [ -w /dev/shm ] &&
    [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt 2097152 ]; then
    base=/dev/shm
fi
tmp=$(mktemp -d -p "${base:-/tmp}")
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
haven() { "$root/bin/haven" -c "$tmp/haven.conf" "$@"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x bin/haven ] || fail "bin/haven is not built (run make)"
command -v python3 >/dev/null || fail "python3 is needed to generate the mailbox"

cat >"$tmp/haven.conf" <<'EOF'
data_dir = data
directory = sqlite:directory.sqlite
EOF

echo "== account"
haven user add big@example.org >"$tmp/out" 2>&1 || fail "user add: $(cat "$tmp/out")"

echo "== generate $N messages"
t=$(now)
# Deterministic (fixed seed) and varied: plain and multipart, RFC 2047
# subjects, folded headers, body lines that need mbox quoting, sizes from
# about 300 to 800 bytes.
python3 - "$N" >"$tmp/big.mbox" <<'PY'
import random, sys

n = int(sys.argv[1])
rnd = random.Random(180000)
words = ("mail store replica segment checkpoint queue delivery restore backup quota "
         "folder index digest relay bounce hold release move switch epoch proxy").split()
days = "Mon Tue Wed Thu Fri Sat Sun".split()
months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
# Body lines come from a pool: generating 180,000 bodies word by word is
# what made this slow.
pool = [" ".join(rnd.choice(words) for _ in range(rnd.randrange(3, 12))) for _ in range(8192)]
out = sys.stdout
for i in range(n):
    d, mo, h, mi, s = rnd.randrange(1, 29), rnd.randrange(12), rnd.randrange(24), rnd.randrange(60), rnd.randrange(60)
    year = 2000 + i * 24 // n
    sender = "user%d@example.net" % rnd.randrange(5000)
    subj = " ".join(rnd.choice(words) for _ in range(rnd.randrange(2, 8)))
    kind = i % 7
    if kind == 3:
        subj = "=?UTF-8?B?w6l0w6kgw6AgUGFyaXM=?= " + subj
    elif kind == 5:
        subj = "=?ISO-8859-1?Q?caf=E9_?= " + subj
    hdr = [
        "From: <%s>" % sender,
        "To: big@example.org",
        "Subject: %s #%d" % (subj, i),
        "Date: %s, %d %s %d %02d:%02d:%02d +0000" % (days[(d + mo) % 7], d, months[mo], year, h, mi, s),
        "Message-ID: <%d.%d@example.net>" % (i, rnd.randrange(1 << 30)),
    ]
    if kind == 6:
        hdr.append("References: <%d.0@example.net>\n <%d.1@example.net>" % (i - 1, i - 2))
    target = rnd.randrange(300, 800)
    lines = []
    if kind == 4:
        hdr += ["MIME-Version: 1.0", 'Content-Type: multipart/alternative; boundary="b%d"' % i]
        lines += ["--b%d" % i, "Content-Type: text/plain; charset=us-ascii", ""]
    if kind == 2:
        lines.append(">From the desk of message %d (quoted for mbox)" % i)
    size = sum(len(x) + 1 for x in hdr) + 1 + sum(len(x) + 1 for x in lines)
    while size < target - (30 if kind == 4 else 0):
        line = pool[rnd.getrandbits(13)]
        lines.append(line)
        size += len(line) + 1
    if kind == 4:
        lines += ["--b%d--" % i]
    out.write("From %s %s %s %2d %02d:%02d:%02d %d\n" % (sender, days[(d + mo) % 7], months[mo], d, h, mi, s, year))
    out.write("\n".join(hdr) + "\n\n" + "\n".join(lines) + "\n\n")
PY
echo "   $(wc -c <"$tmp/big.mbox") bytes in $(took "$t") s"
[ "$(grep -c '^From ' "$tmp/big.mbox")" -eq "$N" ] || fail "generator wrote the wrong number of messages"

echo "== import"
t=$(now)
haven import big@example.org INBOX "$tmp/big.mbox" >"$tmp/import.out" 2>&1 ||
    fail "import: $(tail -3 "$tmp/import.out")"
echo "   $(took "$t") s: $(tail -1 "$tmp/import.out")"
grep -q "imported $N messages" "$tmp/import.out" || fail "import: $(tail -1 "$tmp/import.out")"
imported_bytes=$(sed -n 's/.*imported [0-9]* messages (\([0-9]*\) bytes).*/\1/p' "$tmp/import.out")
rm "$tmp/big.mbox"

echo "== verify"
t=$(now)
haven verify big@example.org >"$tmp/verify.out" 2>&1 || fail "verify: $(head -5 "$tmp/verify.out")"
echo "   $(took "$t") s"

echo "== reconstruct"
t=$(now)
haven reconstruct big@example.org >"$tmp/rec.out" 2>&1 || fail "reconstruct: $(cat "$tmp/rec.out")"
echo "   $(took "$t") s: $(cat "$tmp/rec.out")"
grep -q " $N messages" "$tmp/rec.out" || fail "reconstruct does not report $N messages: $(cat "$tmp/rec.out")"

echo "== verify after reconstruct"
haven verify big@example.org >"$tmp/verify.out" 2>&1 || fail "verify: $(head -5 "$tmp/verify.out")"

echo "== export"
t=$(now)
count=$(haven export big@example.org INBOX --mbox - 2>"$tmp/export.err" | grep -c '^From ' || true)
echo "   $(took "$t") s: $(tail -1 "$tmp/export.err")"
[ "$count" -eq "$N" ] || fail "export wrote $count messages, want $N"
grep -q "exported $N messages ($imported_bytes bytes)" "$tmp/export.err" ||
    fail "export does not give back the $imported_bytes bytes imported: $(tail -1 "$tmp/export.err")"

echo "PASS"
