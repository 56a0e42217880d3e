#!/usr/bin/env python3
"""Sync mode (repl_mode = sync): a write is acknowledged once a replica has
it durably; when the replica is away, repl_sync_on_timeout decides.

Writes go through build/bench/repl/repl_bench syncwrite, which appends to
the primary's store and then calls repl_sync_wait exactly as a writer
(lmtp, imap) in sync mode does, and counts the answers:
  1. replica up: every write is acknowledged by it, and it holds them;
  2. replica stopped, policy async: the first write waits out the timeout,
     the store degrades (alarm in the status), the writes stand and are
     acknowledged; the replica comes back, catches up, sync is restored;
  3. policy refuse: with the replica away, writes are refused.
Then the writers themselves, with real clients: an IMAP APPEND is answered
OK only when the replica already holds the message; with the replica away
and policy refuse, APPEND gets NO [UNAVAILABLE] and mail over SMTP waits in
the queue (deferred, not bounced) until the replica is back, then arrives
exactly once.
"""
import imaplib
import smtplib
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from haven_instance import Instance, ROOT, free_port  # noqa: E402

BENCH = os.path.join(ROOT, "build", "bench", "repl", "repl_bench")
SECRET = "sync-test-secret-0123456789abcdef\n"


def setup(inst, key, value):
    path = os.path.join(inst.dir, "node", "repl.secret")
    with open(path, "w") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    inst.set_conf("repl_secret_file", "repl.secret")
    inst.set_conf(key, value)
    inst.set_conf("repl_mode", "sync")
    inst.set_conf("repl_sync_timeout_ms", "700")


def syncwrite(inst, account, n):
    p = subprocess.run([BENCH, "syncwrite", inst.conf, account, str(n)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    f = dict(kv.split("=") for kv in p.stdout.split()[1:])
    return {k: int(v) for k, v in f.items()}


def status(inst):
    return inst.haven("replcheck", "--status", check=False).stdout


def wait_for(cond, what, tries=200):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("never: " + what)


def replica_count(rep, account):
    p = rep.haven("export", account, "INBOX", "--mbox", "-", check=False)
    if p.returncode != 0:
        return 0
    return sum(1 for line in p.stdout.splitlines() if line.startswith("From "))


def main():
    subprocess.run(["make", "-s", "-C", ROOT, "build/bench/repl/repl_bench"], check=True)
    port = free_port()
    with Instance() as pri, Instance() as rep:
        setup(pri, "repl_port", str(port))
        setup(rep, "repl_primary", "127.0.0.1:%d" % port)
        pri.start()
        pri.wait_port(port)
        rep.start()
        wait_for(lambda: "link=up" in status(pri), "replica connected")
        st = pri.haven("status").stdout
        assert "replication:" in st and "link=up" in st, st

        r = syncwrite(pri, "carol@example.org", 40)
        assert r == {"ok": 40, "degraded": 0, "refused": 0, "modseq": r["modseq"]}, r
        assert pri.haven("replcheck", "carol@example.org", check=False).returncode == 0
        print("PASS sync writes acknowledged by the replica:", r)

        rep.stop()
        wait_for(lambda: "link=down" in status(pri) or "replicas: none" in status(pri),
                 "link down")
        r = syncwrite(pri, "carol@example.org", 5)
        assert r["ok"] == 0 and r["degraded"] == 5 and r["refused"] == 0, r
        st = status(pri)
        assert "state=degraded-async" in st and "alarm=" in st, st
        print("PASS replica away, policy async: writes stand, store degraded with an alarm")
        rep.start()
        wait_for(lambda: "state=sync " in status(pri), "sync restored")
        assert pri.haven("replcheck", check=False).returncode == 0
        r = syncwrite(pri, "carol@example.org", 5)
        assert r["ok"] == 5, r
        print("PASS replica back: caught up, sync restored")

        # Real writers: the OK of an APPEND means the replica has it.
        pri.add_user("dave@example.org", "pw-dave")
        c = pri.imap("dave@example.org", "pw-dave")
        base = replica_count(rep, "dave@example.org")
        for i in range(5):
            typ, data = c.append("INBOX", None, None,
                                 b"Subject: sync %d\r\n\r\nbody %d\r\n" % (i, i))
            assert typ == "OK", (typ, data)
            n = replica_count(rep, "dave@example.org")
            assert n == base + i + 1, "APPEND OK before the replica had it (%d)" % n
        c.logout()
        print("PASS IMAP APPEND answered OK only once the replica holds the message")

        rep.stop()
        pri.stop()
        pri.set_conf("repl_sync_on_timeout", "refuse")
        pri.set_conf("queue_retry_min", "1")
        pri.set_conf("queue_retry_max", "2")
        pri.start()
        pri.wait_port(port)
        # The port is bound by the master; the service answers a moment later.
        wait_for(lambda: "role: primary" in status(pri), "repl service up")
        r = syncwrite(pri, "carol@example.org", 3)
        assert r["refused"] == 3 and r["ok"] == 0 and r["degraded"] == 0, r
        assert "state=refusing" in status(pri)
        c = pri.imap("dave@example.org", "pw-dave")
        try:
            typ, data = c.append("INBOX", None, None, b"Subject: refused\r\n\r\nx\r\n")
        except imaplib.IMAP4.error as e:
            typ, data = "NO", [str(e).encode()]
        assert typ == "NO" and b"UNAVAILABLE" in data[0], (typ, data)
        c.logout()
        s = smtplib.SMTP("127.0.0.1", pri.ports["smtp"], timeout=30)
        s.sendmail("sender@client.test", ["dave@example.org"],
                   b"Subject: queued while refusing\r\n\r\nwait for the replica\r\n")
        s.quit()
        wait_for(lambda: "replicas" in pri.haven("queue", "list", check=False).stdout,
                 "delivery deferred: not confirmed by replicas")
        q = pri.haven("queue", "list").stdout
        assert "deferred" in q and "bounced" not in q, q
        print("PASS policy refuse: APPEND gets NO [UNAVAILABLE], SMTP mail waits deferred")
        rep.start()
        wait_for(lambda: "state=sync " in status(pri), "sync restored after refusing")
        pri.haven("queue", "flush")
        wait_for(lambda: "queued while refusing" in pri.imap_header(
            "dave@example.org", "pw-dave", "Subject").__str__(), "deferred mail delivered")
        subjects = str(pri.imap_header("dave@example.org", "pw-dave", "Subject"))
        assert subjects.count("queued while refusing") == 1, subjects
        p = pri.haven("replcheck", check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        print("PASS policy refuse: writes refused while the replica is away; then restored")
    print("PASS test_repl_sync")


if __name__ == "__main__":
    main()
