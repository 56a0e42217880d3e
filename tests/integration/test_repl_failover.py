#!/usr/bin/env python3
"""Promotion and fencing (docs/replication.md, "Promotion and fencing").

1. A replica is fenced: a write there (haven import) is refused.
2. Planned switchover: `haven promote local` on the replica while the
   primary runs: the primary fences itself and drains, the replica takes
   over at epoch 1; every message is on the new primary; the old primary
   refuses writes and rejoins as its replica; replcheck finds no difference.
   A writer that got past the fence check just before the fence existed
   still holds the account's lock: the switchover waits for it before it
   measures what to drain (here the test holds that lock, as such a writer
   would, and the switchover must not finish until it lets go).
3. Failover, RUNS times (HAVEN_FAILOVER_RUNS, default 30): in sync mode,
   IMAP APPENDs and flag changes (UID STORE +FLAGS) on the primary, SIGKILL
   of its whole havend at a random moment (after a random number of
   acknowledged writes, plus a random fraction of one write's time),
   promote the replica: every APPEND and every flag change answered OK is
   there. The old primary comes back, meets the newer epoch, fences itself
   and rejoins; what it committed but never got acknowledged (a kill
   between commit and ack) is salvaged onto the new primary, so replcheck
   is clean after each run and no message is there twice.
"""
import fcntl
import imaplib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from haven_instance import Instance, free_port  # noqa: E402

SECRET = "failover-test-secret-0123456789abcdef\n"
ACCT, PW = "alice@example.org", "pw-alice"


def setup(inst):
    path = os.path.join(inst.dir, "node", "repl.secret")
    with open(path, "w") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    inst.set_conf("repl_secret_file", "repl.secret")
    inst.set_conf("repl_mode", "sync")
    inst.set_conf("repl_sync_timeout_ms", "5000")
    inst.set_conf("repl_sync_on_timeout", "refuse")


def log_of(inst):
    with open(os.path.join(inst.dir, "havend.log")) as f:
        return f.read()


def role(inst):
    p = inst.haven("replcheck", "--status", check=False)
    for line in p.stdout.splitlines():
        if line.startswith("role: "):
            return line[6:]
    return None


def wait_for(cond, what, tries=600):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("never: " + what)


def subjects(inst):
    p = inst.haven("export", ACCT, "INBOX", "--mbox", "-", check=False)
    return set(l[9:] for l in p.stdout.splitlines() if l.startswith("Subject: "))


def contents(inst):
    """(subjects of every INBOX message, in no order, with repeats; the
    subjects of those that carry \\Flagged): one export as a Maildir,
    whose file names carry the flags (F)."""
    d = tempfile.mkdtemp(dir=inst.dir)
    try:
        inst.haven("export", ACCT, "INBOX", "--maildir", d)
        subjects, flagged = [], set()
        for name in os.listdir(os.path.join(d, "cur")):
            with open(os.path.join(d, "cur", name), "rb") as f:
                for line in f:
                    if line.startswith(b"Subject: "):
                        subj = line[9:].decode().strip()
                        subjects.append(subj)
                        if "F" in name.rsplit(":2,", 1)[-1]:
                            flagged.add(subj)
                        break
        return subjects, flagged
    finally:
        shutil.rmtree(d, ignore_errors=True)


def writer(inst, prefix, acked, flags_acked, progress, stop):
    """APPENDs, and after each a flag change of the message before it;
    records what was answered OK."""
    try:
        c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"])
        c.login(ACCT, PW)
        c.select("INBOX")
        i, last = 0, None
        while not stop.is_set():
            subj = "%s-%d" % (prefix, i)
            typ, data = c.append("INBOX", None, None,
                                 ("Subject: %s\r\n\r\nbody\r\n" % subj).encode())
            if typ == "OK":
                acked.append(subj)
                progress.set()
                uid = data[0].split(b"APPENDUID ")[1].split()[1].rstrip(b"]")
                if last:
                    typ, _ = c.uid("STORE", last[1], "+FLAGS", "(\\Flagged)")
                    if typ == "OK":
                        flags_acked.append(last[0])
                        progress.set()
                last = (subj, uid.decode())
            i += 1
    except Exception:
        pass  # the primary was killed


def main():
    runs = int(os.environ.get("HAVEN_FAILOVER_RUNS", "30"))
    pa, pb = free_port(), free_port()
    with Instance() as a, Instance() as b:
        setup(a)
        setup(b)
        # Each node keeps its repl_port and names the other as the peer to
        # dial; which one is primary is decided by the epoch, not the config.
        a.set_conf("repl_port", str(pa))
        b.set_conf("repl_port", str(pb))
        b.set_conf("repl_primary", "127.0.0.1:%d" % pa)
        a.add_user(ACCT, PW)
        b.add_user(ACCT, PW)  # the directory entry; mail comes by replication
        # user add created INBOX on b as well: start b from a clean store so
        # that it is a byte copy of a.
        shutil.rmtree(os.path.join(b.dir, "node", "data", "accounts"), ignore_errors=True)
        a.start(new_session=True)
        a.wait_port(pa)
        b.start(new_session=True)
        wait_for(lambda: "link=up" in a.haven("replcheck", "--status", check=False).stdout,
                 "replica connected")
        assert role(b) == "replica", role(b)
        c = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
        c.login(ACCT, PW)
        for i in range(20):
            assert c.append("INBOX", None, None, b"Subject: before-%d\r\n\r\nx\r\n" % i)[0] == "OK"
        c.logout()
        want = set("before-%d" % i for i in range(20))
        assert want <= subjects(b), "sync mode: OK before the replica had it"
        mbox = os.path.join(b.dir, "in.mbox")
        with open(mbox, "w") as f:
            f.write("From x@y Thu Jan  1 00:00:00 2015\nSubject: nope\n\nx\n")
        p = b.haven("import", ACCT, "INBOX", mbox, check=False)
        assert p.returncode != 0 and "replica of store" in p.stderr, p.stderr
        print("PASS a replica refuses writes (fenced)")

        # Hold the account's write lock on the primary, as a writer that
        # passed the fence check just before the fence was written does
        # until its records are in the log.
        lock = os.open(os.path.join(a.dir, "node", "data", "accounts", "example.org", "alice",
                                    "lock"), os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        promoted = {}
        t = threading.Thread(target=lambda: promoted.update(p=b.haven("promote", "local")))
        t.start()
        wait_for(lambda: "switchover_waits_for_writer account=" + ACCT in log_of(a),
                 "the switchover waits for the writer")
        assert t.is_alive() and "switchover_done" not in log_of(a), \
            "the switchover went on while a writer that passed the fence was still writing"
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        t.join()
        p = promoted["p"]
        assert "mode=switchover" in p.stdout, p.stdout
        assert role(b) == "primary"
        assert want <= subjects(b), want - subjects(b)
        wait_for(lambda: role(a) == "replica", "old primary rejoins as replica")
        p = a.haven("import", ACCT, "INBOX", mbox, check=False)
        assert p.returncode != 0 and "fenced" in p.stderr, p.stderr
        wait_for(lambda: b.haven("replcheck", check=False).returncode == 0,
                 "replcheck clean after switchover")
        print("PASS planned switchover: no loss, old primary fenced and rejoined, replcheck clean")

        # From here: whoever is primary gets load and is killed.
        pri, rep = b, a
        for run in range(runs):
            acked, flags_acked, stop = [], [], threading.Event()
            progress = threading.Event()
            t = threading.Thread(target=writer, args=(pri, "r%d" % run, acked, flags_acked,
                                                      progress, stop))
            t.start()
            # A random moment: after 1 to 6 acknowledged writes, plus a
            # random part of the next one's time (a write is a commit, a
            # replica's apply and ack, then the answer: the kill can land
            # anywhere in between).
            for _ in range(random.randint(1, 6)):
                assert progress.wait(60), "no write was acknowledged"
                progress.clear()
            time.sleep(random.uniform(0, 0.03))
            os.killpg(pri.proc.pid, signal.SIGKILL)
            pri.proc.wait()
            pri.proc = None
            stop.set()
            t.join()
            # Promote once the replica has seen its link go (else it would
            # ask the dead primary for a switchover).
            wait_for(lambda: "link: up" not in rep.haven("replcheck", "--status",
                                                         check=False).stdout,
                     "the replica notices the primary is gone")
            p = rep.haven("promote", "local")
            assert "mode=failover" in p.stdout, p.stdout
            have, flagged = contents(rep)
            lost = [s for s in acked if s not in have]
            assert not lost, "acknowledged but lost: %s" % lost
            unflagged = set(flags_acked) - flagged
            assert not unflagged, "flag change acknowledged but lost: %s" % sorted(unflagged)
            pri.start(new_session=True)
            wait_for(lambda: role(pri) == "replica", "killed primary rejoins as replica")
            wait_for(lambda: rep.haven("replcheck", check=False).returncode == 0,
                     "replcheck clean after the rejoin")
            listed = contents(rep)[0]
            assert len(listed) == len(set(listed)), "a message is there twice"
            salvaged = sum(log_of(n).count("repl: salvaged ") for n in (a, b))
            rejoins = sum(log_of(n).count("repl: rejoin_start ") for n in (a, b))
            print("PASS failover run %d: %d acknowledged APPENDs and %d flag changes all on the "
                  "new primary; old primary fenced, rejoined, replcheck clean (so far %d rejoins "
                  "with a divergent tail, %d messages salvaged)"
                  % (run, len(acked), len(flags_acked), rejoins, salvaged))
            pri, rep = rep, pri
        print("PASS test_repl_failover")


if __name__ == "__main__":
    main()
