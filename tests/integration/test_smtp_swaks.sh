#!/usr/bin/env bash
# test_smtp_swaks.sh - Haven's smtp and lmtp services driven by swaks, the
# SMTP swiss army knife (Debian package swaks): each run's exit status is
# checked (swaks says where a transaction failed: 23 MAIL, 24 no RCPT
# accepted, 28 AUTH, ...), and every accepted message is looked for in the
# recipients' INBOX over IMAP, exactly once.
#
# Runs: MX delivery; PIPELINING with two recipients; an unknown address and
# a domain not hosted here refused at RCPT; submission without AUTH refused
# at MAIL; STARTTLS + AUTH PLAIN and AUTH LOGIN; a wrong password; implicit
# TLS on the submissions port; LMTP straight into the lmtp service. (This
# swaks, Debian 12's 20201014, has no BDAT: test_smtp_smtplib.py sends BDAT.)
# KEEP=1 keeps the instance.
set -eu
cd "$(dirname "$0")/../.."
command -v swaks >/dev/null || { echo "FAIL: swaks is missing (scripts/deps.sh installs it)" >&2; exit 1; }
[ -x bin/havend ] || { echo "FAIL: bin/havend is not built (run make)" >&2; exit 1; }
exec python3 - <<'PY'
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.getcwd(), "tests", "lib"))
from haven_instance import Instance  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "al1ce-pw"
BOB, BOB_PW = "bob@example.org", "b0b-pw"
CAROL, CAROL_PW = "carol@example.net", "car0l-pw"
PW = {ALICE: ALICE_PW, BOB: BOB_PW, CAROL: CAROL_PW}

node = Instance(keep=bool(os.environ.get("KEEP")))
ok = False
failures = []


def swaks(port, frm, to, *extra):
    mid = "<%s@swaks.test>" % uuid.uuid4().hex
    args = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.test",
            "--from", frm, "--to", ",".join(to), "--timeout", "30",
            "--header", "Message-Id: " + mid, "--header", "Subject: swaks " + mid] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    return p.returncode, p.stdout + p.stderr, mid


def copies(account, mid):
    c = node.imap(account, PW[account])
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("SEARCH", "HEADER", "Message-ID", mid)
        return len(data[0].split()) if typ == "OK" else -1
    finally:
        c.logout()


def case(name, port, frm, to, want_rc, arrive, *extra):
    rc, out, mid = swaks(port, frm, to, *extra)
    if rc != want_rc:
        failures.append("%s: swaks exit %d, want %d\n%s" % (name, rc, want_rc, out[-3000:]))
        print("FAIL", name)
        return
    for acct in arrive:
        deadline = time.time() + 60
        n = copies(acct, mid)
        while n < 1 and time.time() < deadline:
            time.sleep(0.2)
            n = copies(acct, mid)
        if n != 1:
            failures.append("%s: %s holds %d copies of %s, want 1" % (name, acct, n, mid))
            print("FAIL", name)
            return
    print("ok  ", name)


try:
    for a, p in PW.items():
        node.add_user(a, p)
    node.start()
    node.wait_smtp()
    mx, sub, subs, lmtp = (node.ports[k] for k in ("smtp", "submission", "submissions", "lmtp"))
    auth_plain = ["--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", ALICE_PW]
    auth_login = ["--auth", "LOGIN", "--auth-user", ALICE, "--auth-password", ALICE_PW]

    case("MX delivery", mx, "ext@remote.test", [BOB], 0, [BOB])
    case("MX with PIPELINING, two recipients", mx, "ext@remote.test", [BOB, CAROL], 0,
         [BOB, CAROL], "--pipeline")
    case("MX over STARTTLS", mx, "ext@remote.test", [CAROL], 0, [CAROL], "--tls")
    case("MX unknown address refused at RCPT", mx, "ext@remote.test",
         ["nosuchuser@example.org"], 24, [])
    case("MX relaying denied", mx, "ext@remote.test", ["someone@elsewhere.test"], 24, [])
    case("submission without AUTH refused at MAIL", sub, ALICE, [BOB], 23, [])
    case("submission STARTTLS + AUTH PLAIN", sub, ALICE, [BOB], 0, [BOB], "--tls", *auth_plain)
    case("submission STARTTLS + AUTH LOGIN, pipelined", sub, ALICE, [BOB, CAROL], 0,
         [BOB, CAROL], "--tls", "--pipeline", *auth_login)
    case("submission wrong password", sub, ALICE, [BOB], 28, [], "--tls", "--auth", "PLAIN",
         "--auth-user", ALICE, "--auth-password", "wrong-password")
    case("submissions (implicit TLS) + AUTH PLAIN", subs, ALICE, [CAROL], 0, [CAROL],
         "--tls-on-connect", *auth_plain)
    case("LMTP into the lmtp service", lmtp, "ext@remote.test", [BOB], 0, [BOB],
         "--protocol", "LMTP")
    ok = not failures
finally:
    for f in failures:
        print(f)
    if not ok:
        print("havend log:\n" + node.read_log())
        node.keep = True
        print("instance kept in", node.dir)
    node.close()
sys.exit(0 if ok else 1)
PY
