#!/usr/bin/env python3
"""Crash test of the SMTP intake, the queue and LMTP delivery: havend's
whole process group (master, smtp, lmtp, imap) is SIGKILLed at random
moments under load, at least 50 times (CRASH_KILLS), and restarted each
time. Afterwards every message that was answered 250 is in each of its
recipients' mailboxes exactly once, and no message is anywhere twice.

Who got a 250 is known from the test's own client threads (smtplib), each
message with a unique Message-ID, one or two recipients; Postfix's
smtp-source runs beside them as background load (its messages carry
unique Message-IDs too, so they are checked for duplicates). A message
whose 250 was lost with the connection may or may not be delivered, but
at most once. At the end `haven verify` checks every store offline.

Waits poll with generous limits; no test asserts a duration.
"""
import os
import random
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import unittest
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

KILLS = int(os.environ.get("CRASH_KILLS", "50"))
CLIENT_THREADS = 3
ACCOUNTS = ["c%d@example.org" % i for i in range(1, 5)]
LOAD = "load@example.org"
PW = "crash-pw"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


class Sender(threading.Thread):
    """Sends messages one after another, reconnecting whenever the server
    is gone; records (Message-ID, recipients) of every 250, and the
    Message-IDs of messages whose outcome it never learned."""

    def __init__(self, n, port, stop):
        super().__init__(daemon=True)
        self.n, self.port, self.stop = n, port, stop
        self.acked = []      # (msgid, (rcpt, ...)) answered 250
        self.unknown = []    # (msgid, (rcpt, ...)) sent, no final answer
        self.refused = []    # (msgid, reply) refused for good (5xx)
        self.deferred = 0    # refused for now (4xx): a real client retries later
        self.rng = random.Random(n)

    def run(self):
        seq = 0
        s = None
        while not self.stop.is_set():
            if s is None:
                try:
                    s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                                     timeout=10)
                except OSError:
                    time.sleep(0.05)
                    continue
            seq += 1
            mid = "<crash.%d.%d@client.test>" % (self.n, seq)
            rcpts = tuple(self.rng.sample(ACCOUNTS, self.rng.choice((1, 1, 2))))
            body = ("From: <sender%d@client.test>\r\nTo: <%s>\r\nSubject: crash %d %d\r\n"
                    "Message-ID: %s\r\n\r\n" % (self.n, rcpts[0], self.n, seq, mid)
                    + "line of the crash test's message body, to fill it a little\r\n"
                    * self.rng.randrange(1, 60))
            try:
                refused = s.sendmail("sender%d@client.test" % self.n, list(rcpts), body)
                got = tuple(r for r in rcpts if r not in refused)
                if got:
                    self.acked.append((mid, got))
            except smtplib.SMTPRecipientsRefused as e:
                if all(400 <= code < 500 for code, _ in e.recipients.values()):
                    self.deferred += 1
                else:
                    self.refused.append((mid, str(e.recipients)))
                s = self.drop(s)
            except smtplib.SMTPResponseException as e:
                if e.smtp_code == 421 or e.smtp_code < 400:
                    self.unknown.append((mid, rcpts))
                elif e.smtp_code < 500:
                    self.deferred += 1
                else:
                    self.refused.append((mid, "%d %s" % (e.smtp_code, e.smtp_error)))
                s = self.drop(s)
            except (OSError, smtplib.SMTPException):
                # The server died mid-transaction: the message may or may not
                # have been accepted.
                self.unknown.append((mid, rcpts))
                s = self.drop(s)
        if s is not None:
            self.drop(s)

    @staticmethod
    def drop(s):
        try:
            s.close()
        except Exception:
            pass
        return None


class Load(threading.Thread):
    """smtp-source in a loop: it exits when the server dies; start it again."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.runs = 0

    def run(self):
        while not self.stop.is_set():
            self.runs += 1
            p = subprocess.Popen([SMTP_SOURCE, "-s", "4", "-l", "3000", "-m", "400",
                                  "-f", "load@client.test", "-t", LOAD,
                                  "127.0.0.1:%d" % self.port],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while p.poll() is None:
                if self.stop.wait(0.1):
                    p.kill()
                    p.wait()
                    return
            if p.returncode != 0:
                time.sleep(0.05)


class Crash(unittest.TestCase):
    def test_every_acknowledged_message_delivered_once(self):
        self.assertTrue(os.access(SMTP_SOURCE, os.X_OK),
                        "smtp-source is missing (Debian package postfix; scripts/deps.sh)")
        with Instance(keep=os.environ.get("KEEP") == "1") as node:
            for a in ACCOUNTS + [LOAD]:
                node.add_user(a, PW)
            node.start(new_session=True)
            node.wait_smtp()
            port = node.ports["smtp"]
            stop = threading.Event()
            senders = [Sender(i, port, stop) for i in range(CLIENT_THREADS)]
            load = Load(port, stop)
            for t in senders + [load]:
                t.start()
            seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
            rng = random.Random(seed)
            print("kills: %d, moments from CRASH_SEED=%d" % (KILLS, seed))
            try:
                for k in range(KILLS):
                    # A random moment after the smtp service greets again:
                    # sometimes right away (the runner picks up the queue
                    # it recovered), mostly under full load.
                    time.sleep(rng.choice((rng.uniform(0.0, 0.2), rng.uniform(0.2, 1.5),
                                           rng.uniform(0.2, 1.5))))
                    node.kill_group()
                    node.start(new_session=True)
                    node.wait_smtp()
                    if (k + 1) % 10 == 0:
                        print("%d kills, %d messages acknowledged so far" % (
                            k + 1, sum(len(s.acked) for s in senders)))
                time.sleep(1)
            finally:
                stop.set()
                for t in senders + [load]:
                    t.join(30)
            acked = [a for s in senders for a in s.acked]
            unknown = [u for s in senders for u in s.unknown]
            refused = [r for s in senders for r in s.refused]
            print("acknowledged %d, outcome unknown %d, deferred (4xx) %d, refused %d, "
                  "smtp-source runs %d" % (len(acked), len(unknown),
                                           sum(s.deferred for s in senders), len(refused),
                                           load.runs))
            self.assertGreater(len(acked), KILLS, "the load did not get through")
            self.assertEqual(refused[:5], [], "the clients' messages must not be refused")

            want = {a: set() for a in ACCOUNTS}
            maybe = {a: set() for a in ACCOUNTS}
            for mid, rcpts in acked:
                for r in rcpts:
                    want[r].add(mid)
            for mid, rcpts in unknown:
                for r in rcpts:
                    maybe[r].add(mid)

            # Every acknowledged message arrives (the queue delivers what
            # it holds after the last restart).
            deadline = time.time() + 180
            while True:
                have = {a: Counter(v for _, v in node.imap_header(a, PW, "Message-ID"))
                        for a in ACCOUNTS}
                missing = {a: want[a] - set(have[a]) for a in ACCOUNTS}
                if not any(missing.values()) or time.time() > deadline:
                    break
                time.sleep(1)
            # Let deliveries of in-doubt messages settle, then look again.
            time.sleep(3)
            have = {a: Counter(v for _, v in node.imap_header(a, PW, "Message-ID"))
                    for a in ACCOUNTS}
            for a in ACCOUNTS:
                missing = sorted(want[a] - set(have[a]))
                self.assertEqual(missing[:10], [], "%s: %d acknowledged messages missing" % (
                    a, len(missing)))
                dups = sorted(m for m, n in have[a].items() if n > 1)
                self.assertEqual(dups[:10], [], "%s: %d messages delivered twice" % (a, len(dups)))
                stray = sorted(m for m in have[a] if m not in want[a] and m not in maybe[a])
                self.assertEqual(stray[:10], [], "%s: messages that were never sent to it" % a)
            load_ids = Counter(v for _, v in node.imap_header(LOAD, PW, "Message-ID"))
            dups = sorted(m for m, n in load_ids.items() if n > 1)
            self.assertEqual(dups[:10], [], "smtp-source messages delivered twice")
            print("delivered: %s; smtp-source load: %d; in-doubt delivered: %d of %d" % (
                ", ".join("%s %d" % (a.split("@")[0], sum(have[a].values())) for a in ACCOUNTS),
                sum(load_ids.values()),
                sum(1 for a in ACCOUNTS for m in maybe[a] if m in have[a]),
                sum(len(maybe[a]) for a in ACCOUNTS)))

            node.stop()
            v = node.haven("verify", check=False)
            self.assertEqual(v.returncode, 0, "haven verify after the crashes:\n" + v.stdout + v.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
