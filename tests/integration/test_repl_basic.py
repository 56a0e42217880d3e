#!/usr/bin/env python3
"""Replication between two havend instances on one machine.

A primary (repl_port) and a replica (repl_primary) with a shared secret:
  1. initial sync of accounts that already hold mail (small messages that
     travel inside their log records and large ones that travel as blobs);
  2. live replication of IMAP APPEND, STORE and EXPUNGE;
  3. the replica stopped while the primary takes mail, then started again:
     it resumes from what it had and catches up;
  4. the replica's copy is byte-identical (haven export on both sides);
  5. a wrong secret is refused;
  6. a replica changed behind the primary's back is reported by
     haven replcheck (exit 1, the account and its first differing modseq).
Waits poll with a bound on tries; nothing asserts how long anything takes.
"""
import imaplib
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance, free_port  # noqa: E402

SECRET = "0123456789abcdef0123456789abcdef\n"


def write_secret(inst, text=SECRET):
    path = os.path.join(inst.dir, "node", "repl.secret")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    inst.set_conf("repl_secret_file", "repl.secret")


def mbox(n, start=0, big_every=0):
    out = []
    for i in range(start, start + n):
        body = "line %d of message %d\n" % (i, i)
        if big_every and i % big_every == 0:
            body = ("x" * 99 + "\n") * 2000  # 200 KB: stored as a blob, not inline
        out.append("From sender@example.net Mon Jan  1 00:00:00 2024\n"
                   "From: sender@example.net\nTo: user@example.org\n"
                   "Subject: message %d\nMessage-ID: <%d@example.net>\n\n%s\n" % (i, i, body))
    return "".join(out)


def replcheck(inst, *args, check=False):
    return inst.haven("replcheck", *args, check=check)


def wait_in_sync(primary, what, tries=240):
    last = None
    for _ in range(tries):
        p = replcheck(primary)
        if p.returncode == 0:
            return p.stdout
        last = p
        time.sleep(0.5)
    st = primary.haven("replcheck", "--status", check=False)
    raise AssertionError("%s: never in sync: %s%s\nstatus:\n%s" % (what, last.stdout, last.stderr,
                                                                   st.stdout + st.stderr))


def export(inst, account, mailbox, path):
    inst.haven("export", account, mailbox, "--mbox", path)
    with open(path, "rb") as f:
        return f.read()


def main():
    port = free_port()
    with Instance() as pri, Instance() as rep:
        write_secret(pri)
        write_secret(rep)
        pri.set_conf("repl_port", str(port))
        rep.set_conf("repl_primary", "127.0.0.1:%d" % port)
        pri.add_user("alice@example.org", "pw-alice")
        pri.add_user("bob@example.org", "pw-bob")
        src = os.path.join(pri.dir, "in.mbox")
        with open(src, "w") as f:
            f.write(mbox(3000, big_every=500))
        pri.haven("import", "alice@example.org", "INBOX", src)
        with open(src, "w") as f:
            f.write(mbox(200, start=5000))
        pri.haven("import", "bob@example.org", "Archive", src)

        # 1. initial sync
        pri.start()
        pri.wait_port(port)
        rep.start()
        out = wait_in_sync(pri, "initial sync")
        assert "checked=2 differ=0" in out, out
        print("PASS initial sync:", out.strip().splitlines()[-1])

        # 2. live IMAP changes
        m = imaplib.IMAP4("127.0.0.1", pri.ports["imap"])
        m.login("alice@example.org", "pw-alice")
        for i in range(100):
            m.append("INBOX", None, None, ("From: a@b\r\nSubject: live %d\r\n\r\nbody %d\r\n"
                                           % (i, i)).encode())
        m.select("INBOX")
        m.store("1:50", "+FLAGS", "(\\Seen \\Flagged)")
        m.store("10:20", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.create("Work")
        m.copy("1:5", "Work")
        out = wait_in_sync(pri, "live changes")
        print("PASS live changes:", out.strip().splitlines()[-1])

        # 3. replica down while the primary takes mail, then back
        rep.stop()
        for i in range(100):
            m.append("INBOX", None, None, ("From: a@b\r\nSubject: offline %d\r\n\r\nx\r\n"
                                           % i).encode())
        m.store("1:*", "-FLAGS", "(\\Flagged)")
        m.logout()
        p = replcheck(pri)
        assert p.returncode != 0, "replcheck passed with no replica connected: " + p.stdout
        rep.start()
        out = wait_in_sync(pri, "catch-up after restart")
        print("PASS catch-up:", out.strip().splitlines()[-1])

        # 4. byte-identical copies
        for acct, box in (("alice@example.org", "INBOX"), ("alice@example.org", "Work"),
                          ("bob@example.org", "Archive")):
            a = export(pri, acct, box, os.path.join(pri.dir, "p.mbox"))
            b = export(rep, acct, box, os.path.join(rep.dir, "r.mbox"))
            assert a == b and len(a) > 0, "%s %s differs after replication" % (acct, box)
        print("PASS exports identical")

        # 5. a replica with the wrong secret gets nothing
        with Instance() as bad:
            write_secret(bad, "another-secret-of-enough-length\n")
            bad.set_conf("repl_primary", "127.0.0.1:%d" % port)
            bad.start()
            log = ""
            for _ in range(200):
                log = bad.read_log()
                if "failed authentication" in log or "authentication failed" in log:
                    break
                time.sleep(0.1)
            assert "authentication" in log, log
            assert not os.path.exists(os.path.join(bad.dir, "node", "data", "accounts",
                                                   "example.org", "alice")), \
                "a replica with the wrong secret received an account"
        print("PASS wrong secret refused")

        # 6. records written on the replica behind the primary's back are
        # not lost: when it reconnects they are salvaged onto the primary
        # as new messages, the replica's old copy is set aside, and the pair
        # is in sync again (docs/replication.md, "Rejoining with a divergent
        # tail").
        def archive_count(node):
            p = node.haven("export", "bob@example.org", "Archive", "--mbox", "-", check=False)
            return sum(1 for l in p.stdout.splitlines() if l.startswith("From ")) \
                if p.returncode == 0 else -1

        before = archive_count(pri)
        rep.stop()
        with open(src, "w") as f:
            f.write(mbox(3, start=9000))
        # A replica is fenced (it refuses writes, which test_repl_failover
        # checks), so lift the fence by hand first.
        fence = os.path.join(rep.dir, "node", "data", "fence")
        if os.path.exists(fence):
            os.unlink(fence)
        rep.haven("import", "bob@example.org", "Archive", src)
        rep.start()
        p = None
        for _ in range(200):
            p = replcheck(pri, "bob@example.org")
            if archive_count(pri) == before + 3 and p.returncode == 0:
                break
            time.sleep(0.3)
        assert archive_count(pri) == before + 3, (before, archive_count(pri))
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        diverged = os.path.join(rep.dir, "node", "data", "diverged")
        assert os.path.isdir(diverged) and any(n.startswith("bob@example.org")
                                               for n in os.listdir(diverged)), diverged
        assert "salvage" in pri.read_log(), "salvage not reported in the log"
        print("PASS replica's extra messages salvaged onto the primary; pair in sync")
    print("PASS test_repl_basic")


if __name__ == "__main__":
    main()
