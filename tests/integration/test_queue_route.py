#!/usr/bin/env python3
"""The queue delivers each account's mail to the lmtp service of the store
that holds it (src/queue/queue_route.c), with two havend nodes on this
machine sharing one directory (node 1's SQLite file):

- node 1 serves store s1 (its `store_name`), node 2 store s2, and the
  directory says where s2's lmtp service is (`haven store add s2 ...
  --lmtp`); alice lives on s1, bob on s2;
- mail sent over SMTP to node 1 for both (one message with both
  recipients, and one for bob alone) lands in alice's INBOX on node 1 and
  in bob's on node 2, read back over IMAP on each node, and nowhere else;
- node 2 stopped: mail for bob is held ("store not answering"), neither
  bounced nor deferred, while mail for alice still arrives; node 2 started
  again: bob's held mail arrives by itself, once.

Waits poll with generous limits; nothing asserts how long anything took.
"""
import imaplib
import os
import smtplib
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "al1ce-pw"
BOB, BOB_PW = "bob@example.org", "b0b-pw"
TIMEOUT = 60


def message(subject, to):
    return ("From: <ext@remote.test>\r\nTo: %s\r\nSubject: %s\r\n"
            "Message-ID: <%s@client.test>\r\n\r\nrouted\r\n"
            % (", ".join("<%s>" % t for t in to), subject, uuid.uuid4().hex))


class QueueRoute(unittest.TestCase):
    def setUp(self):
        keep = os.environ.get("KEEP") == "1"
        self.n1, self.n2 = Instance(keep=keep), Instance(keep=keep)
        self.n1.set_conf("store_name", "s1")
        self.n2.set_conf("store_name", "s2")
        self.n2.share_directory(self.n1)
        for n in (self.n1, self.n2):
            n.set_conf("queue_retry_min", "1")
            n.set_conf("queue_retry_max", "2")
        # Each account is added on the node of its store, which makes its
        # mail folder there; both land in the one directory.
        self.n1.add_user(ALICE, ALICE_PW)
        self.n2.add_user(BOB, BOB_PW)
        self.n1.haven("store", "add", "s2", "127.0.0.1:%d" % self.n2.ports["imap"],
                      "--lmtp", "127.0.0.1:%d" % self.n2.ports["lmtp"])

    def tearDown(self):
        # A failed test leaves both nodes' folders and prints their logs.
        for name, n in (("node 1", self.n1), ("node 2", self.n2)):
            if not getattr(self, "passed", False):
                n.keep = True
                print("%s (kept in %s) log:\n%s" % (name, n.dir, n.read_log()))
            n.close()

    def full_log(self, node):
        with open(os.path.join(node.dir, "havend.log")) as f:
            return f.read()

    def send(self, subject, to):
        with smtplib.SMTP("127.0.0.1", self.n1.ports["smtp"], local_hostname="client.test",
                          timeout=60) as s:
            self.assertEqual(s.sendmail("ext@remote.test", to, message(subject, to)), {})

    def subjects(self, node, user, pw):
        return sorted(v for _, v in node.imap_header(user, pw, "Subject"))

    def queue_rows(self):
        """[(address, state, reason)] of node 1's queue (`haven queue list`)."""
        p = self.n1.haven("queue", "list")
        rows = []
        for line in p.stdout.splitlines():
            for r in line.split("\t")[4:]:
                address, state, *reason = r.split(" ", 2)
                rows.append((address, state, reason[0] if reason else ""))
        return rows

    def wait_queue(self, pred):
        deadline = time.time() + TIMEOUT
        rows = self.queue_rows()
        while not pred(rows) and time.time() < deadline:
            time.sleep(0.2)
            rows = self.queue_rows()
        return rows

    def test_each_account_on_its_store(self):
        n1, n2 = self.n1, self.n2
        self.assertIn("s2\t127.0.0.1:%d\tprimary\t0\t127.0.0.1:%d\t-"
                      % (n2.ports["imap"], n2.ports["lmtp"]), n1.haven("store", "list").stdout)
        n1.start()
        n2.start()
        n1.wait_smtp()
        n2.wait_port(n2.ports["lmtp"])

        self.send("to both", [ALICE, BOB])
        self.send("to bob", [BOB])
        self.assertEqual(n1.wait_count(ALICE, ALICE_PW, 1, timeout=TIMEOUT), 1)
        self.assertEqual(n2.wait_count(BOB, BOB_PW, 2, timeout=TIMEOUT), 2)
        self.assertEqual(self.subjects(n1, ALICE, ALICE_PW), ["to both"])
        self.assertEqual(self.subjects(n2, BOB, BOB_PW), ["to bob", "to both"])
        self.assertEqual(self.wait_queue(lambda r: not r), [], "node 1's queue is empty")
        # Nothing went to the other node's store: a node keeps no folder
        # for an account of another store, and refuses its logins (the
        # proxy sends them to the right store).
        for node, user, pw in ((n2, ALICE, ALICE_PW), (n1, BOB, BOB_PW)):
            with self.assertRaises(imaplib.IMAP4.error) as cm:
                node.imap_count(user, pw)
            self.assertIn("UNAVAILABLE", str(cm.exception))
            local, domain = user.split("@")
            self.assertFalse(os.path.exists(os.path.join(node.dir, "node", "data", "accounts",
                                                         domain, local, "log")),
                             "%s has a mail folder on the wrong store" % user)

        # Store s2 down: bob's mail waits, held, and alice's still goes.
        n2.stop()
        self.send("while s2 is down", [BOB])
        self.send("alice meanwhile", [ALICE])
        rows = self.wait_queue(lambda r: any(a == BOB and st == "held" for a, st, _ in r))
        self.assertEqual([(a, st) for a, st, _ in rows], [(BOB, "held")], rows)
        self.assertIn("store not answering", rows[0][2])
        self.assertEqual(n1.wait_count(ALICE, ALICE_PW, 2, timeout=TIMEOUT), 2,
                         "store s2 down must not hold mail for store s1")
        # Well past the retry interval (1-2 s), held mail is neither
        # retried into a bounce nor deferred: it stays held.
        time.sleep(3)
        rows = self.queue_rows()
        self.assertEqual([(a, st) for a, st, _ in rows], [(BOB, "held")], rows)
        self.assertIn("queue_store_down store=s2", self.full_log(n1))

        # s2 back: the watcher's probe finds it and releases bob's mail.
        n2.start()
        self.assertEqual(n2.wait_count(BOB, BOB_PW, 3, timeout=TIMEOUT), 3)
        self.assertEqual(self.subjects(n2, BOB, BOB_PW),
                         ["to bob", "to both", "while s2 is down"])
        self.assertEqual(self.wait_queue(lambda r: not r), [], "node 1's queue is empty")
        self.assertIn("queue_store_up store=s2", self.full_log(n1))
        # No DSN anywhere, and nothing twice.
        time.sleep(1)
        self.assertEqual(n2.imap_count(BOB, BOB_PW), 3)
        self.assertEqual(self.subjects(n1, ALICE, ALICE_PW), ["alice meanwhile", "to both"])
        self.passed = True


if __name__ == "__main__":
    unittest.main(verbosity=2)
