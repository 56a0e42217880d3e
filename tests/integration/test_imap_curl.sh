#!/usr/bin/env bash
# test_imap_curl.sh - curl's IMAP support, a client nobody here wrote,
# against a real havend, one-liners as a person would type them:
#   - the mailbox list; EXAMINE, STATUS, SEARCH and CREATE with -X;
#   - APPEND with -T, then the message back by UID, by MAILINDEX and by
#     SECTION, byte for byte;
#   - the same over implicit TLS (imaps://) and STARTTLS (--ssl-reqd);
#   - a wrong password, an unknown UID and an unknown command give curl's
#     own error exits (67, 78, 21) and leave the server serving.
set -eu
cd "$(dirname "$0")/../.."
command -v curl >/dev/null || { echo "FAIL: curl is missing (scripts/deps.sh installs it)" >&2; exit 1; }
curl --version | grep -qw imap || { echo "FAIL: this curl has no IMAP support" >&2; exit 1; }
[ -x bin/havend ] || { echo "FAIL: bin/havend is not built (run make)" >&2; exit 1; }
exec python3 - <<'PY'
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tests", "lib"))
from haven_instance import Instance  # noqa: E402

USER, PASS = "curl@example.org", "curl-pw-9"
MSG1 = (b"From: Alice <alice@example.org>\r\nTo: curl@example.org\r\nSubject: first via curl\r\n"
        b"Date: Thu, 4 Jan 2024 09:00:00 +0000\r\nMessage-ID: <c1@example.org>\r\n\r\n"
        b"Hello from curl.\r\nSecond line, caf\xc3\xa9.\r\n")
MSG2 = (b"From: Bob <bob@example.org>\r\nSubject: second one\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\npart one text\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\npart two text\r\n--XX--\r\n")
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1
    print("ok   %s" % what)


def curl(*args, user=USER + ":" + PASS):
    p = subprocess.run(["curl", "-s", "-S", "--max-time", "60", "--user", user] + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True)
    return p.returncode, p.stdout


node = Instance(keep=bool(os.environ.get("KEEP")))
ok = False
try:
    node.add_user(USER, PASS)
    node.start()
    node.wait_port(node.ports["imaps"])
    base = "imap://127.0.0.1:%d" % node.ports["imap"]
    tls_base = "imaps://127.0.0.1:%d" % node.ports["imaps"]

    rc, out = curl(base + "/")
    check(rc == 0, "LIST: curl exits 0")
    names = sorted(re.findall(rb'^\* LIST \([^)]*\) "/" (\S+)\r$', out, re.M))
    check(names == [b"Archive", b"Drafts", b"INBOX", b"Junk", b"Sent", b"Trash"],
          "LIST: the six default mailboxes (%r)" % names)
    check(b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in out, "LIST: Sent has \\Sent")

    files = {}
    for i, msg in ((1, MSG1), (2, MSG2)):
        files[i] = os.path.join(node.dir, "msg%d.eml" % i)
        with open(files[i], "wb") as f:
            f.write(msg)
        rc, out = curl(base + "/INBOX", "-T", files[i])
        check(rc == 0, "APPEND message %d with -T" % i)

    rc, out = curl(base + "/INBOX;UID=1")
    check(rc == 0 and out == MSG1, "FETCH by UID=1: byte for byte")
    rc, out = curl(base + "/INBOX;UID=2")
    check(rc == 0 and out == MSG2, "FETCH by UID=2: byte for byte")
    rc, out = curl(base + "/INBOX;MAILINDEX=2")
    check(rc == 0 and out == MSG2, "FETCH by MAILINDEX=2")
    rc, out = curl(base + "/INBOX;UID=2;SECTION=2")
    check(rc == 0 and out == b"part two text", "FETCH SECTION=2 of a multipart (%r)" % out)
    rc, out = curl(base + "/INBOX;UID=1;SECTION=TEXT")
    check(rc == 0 and out == MSG1.split(b"\r\n\r\n", 1)[1], "FETCH SECTION=TEXT")
    rc, out = curl(base + "/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)")
    check(rc == 0 and out == b"Subject: first via curl\r\n\r\n", "FETCH SECTION=HEADER.FIELDS")

    rc, out = curl(base + "/", "-X", "EXAMINE INBOX")
    check(rc == 0 and b"* 2 EXISTS" in out and b"[UIDVALIDITY " in out,
          "-X 'EXAMINE INBOX': 2 EXISTS and a UIDVALIDITY")
    rc, out = curl(base + "/", "-X", "STATUS INBOX (MESSAGES UIDNEXT UNSEEN)")
    check(rc == 0 and out.strip() == b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UNSEEN 0)",
          "-X STATUS: 2 messages, both seen by the fetches (%r)" % out.strip())
    rc, out = curl(base + "/INBOX?SUBJECT%20second")
    check(rc == 0 and out.strip() == b"* SEARCH 2", "SEARCH in the URL (%r)" % out.strip())
    rc, out = curl(base + "/INBOX", "-X", "UID SEARCH FROM alice")
    check(rc == 0 and out.strip() == b"* SEARCH 1", "-X 'UID SEARCH FROM alice'")
    rc, out = curl(base + "/", "-X", "CREATE Curly")
    check(rc == 0, "-X 'CREATE Curly'")
    rc, out = curl(base + "/Curly", "-T", files[1])
    check(rc == 0, "APPEND into the new mailbox")
    rc, out = curl(base + "/Curly;UID=1")
    check(rc == 0 and out == MSG1, "and back from it")

    rc, out = curl(tls_base + "/INBOX;UID=1", "-k")
    check(rc == 0 and out == MSG1, "imaps:// (port 993 style): FETCH by UID")
    rc, out = curl(base + "/", "-k", "--ssl-reqd")
    check(rc == 0 and b"Curly" in out, "STARTTLS (--ssl-reqd): LIST")
    with open(os.path.join(node.dir, "havend.log")) as f:
        log = f.read()
    check(len(re.findall(r"user=%s login peer=\S+ tls=1" % re.escape(USER), log)) >= 2,
          "the TLS logins are logged as tls=1")

    rc, out = curl(base + "/", user=USER + ":wrong")
    check(rc == 67, "wrong password: curl exit 67, login denied (got %d)" % rc)
    rc, out = curl(base + "/INBOX;UID=99")
    check(rc == 78 and out == b"", "unknown UID: curl exit 78, nothing fetched (got %d)" % rc)
    rc, out = curl(base + "/", "-X", "FROBNICATE")
    check(rc == 21, "unknown command: curl exit 21, quote error (got %d)" % rc)
    rc, out = curl(base + "/INBOX;UID=2")
    check(rc == 0 and out == MSG2, "the server still serves")
    print("PASS: %d checks" % checks)
    ok = True
finally:
    if not ok:
        print("havend log:\n" + node.read_log())
        node.keep = True
        print("instance kept in", node.dir)
    node.close()
PY
