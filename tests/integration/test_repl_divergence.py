#!/usr/bin/env python3
"""A former primary rejoins with messages the new primary never got
(docs/replication.md, "Rejoining with a divergent tail").

Async mode. A primary and its replica share some messages; the replica is
stopped; the primary acknowledges N more (two in a mailbox created
meanwhile, with flags and a keyword), then is killed. The replica is
promoted (failover) and takes a message of its own. The old primary comes
back: it meets the newer epoch, rejoins as replica, its N messages are
appended on the new primary as new messages (seen over IMAP, with their
mailbox, flags and keyword), each is logged, replcheck is clean, and its
old copy of the account is kept under DATA/diverged/. A restart of the
rejoined node adds nothing twice.
"""
import imaplib
import os
import re
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from haven_instance import Instance, free_port  # noqa: E402

SECRET = "divergence-test-secret-0123456789abcdef\n"
ACCT, PW = "alice@example.org", "pw-alice"
N_INBOX, N_WORK = 4, 2


def setup(inst, port):
    path = os.path.join(inst.dir, "node", "repl.secret")
    with open(path, "w") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    inst.set_conf("repl_secret_file", "repl.secret")
    inst.set_conf("repl_mode", "async")
    inst.set_conf("repl_port", str(port))


def role(inst):
    p = inst.haven("replcheck", "--status", check=False)
    for line in p.stdout.splitlines():
        if line.startswith("role: "):
            return line[6:]
    return None


def wait_for(cond, what, tries=300):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("never: " + what)


def messages(inst, mailbox):
    """Subject -> flags of every message in mailbox, over IMAP."""
    c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"])
    try:
        c.login(ACCT, PW)
        typ, _ = c.select('"%s"' % mailbox, readonly=True)
        if typ != "OK":
            return {}
        typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        if typ != "OK":
            return out
        for item in data:
            if not isinstance(item, tuple):
                continue
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()
            subj = item[1].decode().strip()
            assert subj.startswith("Subject: "), subj
            subj = subj[9:]
            assert subj not in out, "duplicate message %s in %s" % (subj, mailbox)
            out[subj] = set(flags)
        return out
    finally:
        c.logout()


def log_of(inst):
    with open(os.path.join(inst.dir, "havend.log")) as f:
        return f.read()


def main():
    pa, pb = free_port(), free_port()
    with Instance() as a, Instance() as b:
        setup(a, pa)
        setup(b, pb)
        b.set_conf("repl_primary", "127.0.0.1:%d" % pa)
        a.add_user(ACCT, PW)
        b.add_user(ACCT, PW)
        # b must start as a byte copy of a: drop the INBOX user add made.
        shutil.rmtree(os.path.join(b.dir, "node", "data", "accounts"), ignore_errors=True)
        a.start(new_session=True)
        a.wait_port(pa)
        b.start(new_session=True)
        wait_for(lambda: "link=up" in a.haven("replcheck", "--status", check=False).stdout,
                 "replica connected")
        c = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
        c.login(ACCT, PW)
        for i in range(5):
            assert c.append("INBOX", None, None, b"Subject: shared-%d\r\n\r\nx\r\n" % i)[0] == "OK"
        c.logout()
        wait_for(lambda: a.haven("replcheck", check=False).returncode == 0, "replica in sync")

        # The replica goes away; the primary acknowledges more (async).
        b.stop()
        c = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
        c.login(ACCT, PW)
        for i in range(N_INBOX):
            assert c.append("INBOX", "(\\Seen)" if i == 0 else None, None,
                            b"Subject: tail-%d\r\n\r\nonly on the old primary\r\n" % i)[0] == "OK"
        assert c.create("Work")[0] == "OK"
        for i in range(N_WORK):
            assert c.append("Work", "(\\Flagged $Project)", None,
                            b"Subject: work-%d\r\n\r\nin a new mailbox\r\n" % i)[0] == "OK"
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Answered)")  # a flag change: reported, not replayed
        c.logout()
        os.killpg(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        a.proc = None

        # Failover to b, which then takes a write of its own.
        b.start(new_session=True)
        wait_for(lambda: role(b) == "replica", "b's repl service is up")
        p = b.haven("promote", "local")
        assert "mode=failover" in p.stdout, p.stdout + p.stderr
        wait_for(lambda: role(b) == "primary", "b is primary")
        c = imaplib.IMAP4("127.0.0.1", b.ports["imap"])
        c.login(ACCT, PW)
        assert c.append("INBOX", None, None, b"Subject: new-primary-0\r\n\r\nx\r\n")[0] == "OK"
        c.logout()
        before = messages(b, "INBOX")
        assert not any(s.startswith("tail-") for s in before), before

        # The old primary comes back.
        a.start(new_session=True)
        wait_for(lambda: role(a) == "replica", "old primary rejoins as replica")
        tails = set("tail-%d" % i for i in range(N_INBOX))
        works = set("work-%d" % i for i in range(N_WORK))
        wait_for(lambda: tails <= set(messages(b, "INBOX")), "tail messages on the new primary")
        wait_for(lambda: works <= set(messages(b, "Work")), "Work messages on the new primary")
        inbox, work = messages(b, "INBOX"), messages(b, "Work")
        want = set("shared-%d" % i for i in range(5)) | tails | {"new-primary-0"}
        assert set(inbox) == want, set(inbox) ^ want
        assert set(work) == works, work
        assert "\\Seen" in inbox["tail-0"], inbox["tail-0"]
        for s in works:
            assert {"\\Flagged", "$Project"} <= work[s], work[s]
        print("PASS the old primary's %d messages are on the new primary as new messages "
              "(mailbox, flags, keyword kept)" % (N_INBOX + N_WORK))

        logb = log_of(b)
        salvaged = re.findall(r"repl: salvaged account=%s .*old_modseq=(\d+) .*uid=(\d+)" %
                              re.escape(ACCT), logb)
        assert len(salvaged) == N_INBOX + N_WORK, salvaged
        assert re.search(r"repl: salvage_done account=%s .*messages=%d stored=%d" %
                         (re.escape(ACCT), N_INBOX + N_WORK, N_INBOX + N_WORK), logb), logb[-3000:]
        loga = log_of(a)
        assert "repl: rejoin_not_replayed account=%s" % ACCT in loga, loga[-3000:]
        assert "repl: rejoin_set_aside account=%s" % ACCT in loga, loga[-3000:]
        print("PASS each salvaged message and the summary are logged")

        wait_for(lambda: b.haven("replcheck", check=False).returncode == 0,
                 "replcheck clean after the rejoin")
        p = b.haven("replcheck", check=False)
        assert "differ=0" in p.stdout, p.stdout
        print("PASS replcheck clean after the rejoin")

        aside = os.path.join(a.dir, "node", "data", "diverged")
        kept = [d for d in os.listdir(aside) if d.startswith(ACCT + ".")]
        assert len(kept) == 1, kept
        assert os.path.isdir(os.path.join(aside, kept[0], "log")), kept
        print("PASS the old copy is kept in DATA/diverged/%s" % kept[0])

        # A restart of the rejoined replica: in sync now, nothing added twice.
        a.stop()
        a.start(new_session=True)
        wait_for(lambda: "link=up" in b.haven("replcheck", "--status", check=False).stdout,
                 "replica reconnected")
        wait_for(lambda: b.haven("replcheck", check=False).returncode == 0, "replcheck clean")
        assert set(messages(b, "INBOX")) == want and set(messages(b, "Work")) == works
        assert len(os.listdir(aside)) == 1, os.listdir(aside)
        print("PASS test_repl_divergence")


if __name__ == "__main__":
    main()
