#!/usr/bin/env python3
"""IMAP through Python's imaplib (a client nobody here wrote) against a
real havend: login rules, mailboxes, append/fetch/store/search/copy/move/
expunge, IDLE between two sessions, TLS on 993 and STARTTLS, bad input."""
import imaplib
import os
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
       b"Subject: hello there\r\nDate: Tue, 2 Jan 2024 15:04:05 +0000\r\n"
       b"Message-ID: <m1@example.org>\r\n\r\nBody with the word pineapple.\r\n")


class ImapTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Instance()
        cls.node.set_conf("imap_auth_fail_delay_ms", "10")
        cls.node.add_user("bob@example.org", "s3cret-pw")
        cls.node.add_user("moving@example.org", "pw-moving")
        cls.node.haven("user", "state", "moving@example.org", "moving")
        cls.node.start()
        cls.port = cls.node.ports["imap"]

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def login(self):
        c = imaplib.IMAP4("127.0.0.1", self.port)
        c.login("bob@example.org", "s3cret-pw")
        return c

    def test_01_capability_and_login(self):
        c = imaplib.IMAP4("127.0.0.1", self.port)
        caps = c.capabilities
        for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "SPECIAL-USE"):
            self.assertIn(cap, caps)
        with self.assertRaises(imaplib.IMAP4.error) as e:
            c.login("bob@example.org", "wrong")
        self.assertIn(b"AUTHENTICATIONFAILED", str(e.exception).encode())
        typ, _ = c.login("bob@example.org", "s3cret-pw")
        self.assertEqual(typ, "OK")
        c.logout()

    def test_02_inactive_account_refused_and_recorded(self):
        c = imaplib.IMAP4("127.0.0.1", self.port)
        with self.assertRaises(imaplib.IMAP4.error) as e:
            c.login("moving@example.org", "pw-moving")
        self.assertIn("UNAVAILABLE", str(e.exception))
        self.assertIn("moved", str(e.exception))
        c.logout()
        out = self.node.haven("user", "show", "moving@example.org").stdout
        self.assertRegex(out, r"last.login.attempt\S*\s*[:=]?\s*\S*\d")

    def test_03_default_mailboxes(self):
        c = self.login()
        typ, lines = c.list()
        text = b"\n".join(lines)
        for name, use in ((b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Drafts", b"\\Drafts"),
                          (b"Junk", b"\\Junk"), (b"Archive", b"\\Archive")):
            self.assertIn(name, text)
            self.assertIn(use, text)
        self.assertIn(b"INBOX", text)
        c.logout()

    def test_04_append_fetch_store_search(self):
        c = self.login()
        c.create("Work")
        typ, data = c.append("Work", "(\\Flagged)", None, MSG)
        self.assertEqual(typ, "OK")
        self.assertIn(b"APPENDUID", data[0])
        typ, data = c.select("Work")
        self.assertEqual(data[0], b"1")
        typ, data = c.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[])")
        self.assertIn(b"\\Flagged", data[0][0])
        self.assertEqual(data[0][1], MSG)
        self.assertIn(b"RFC822.SIZE %d" % len(MSG), data[0][0])
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(data[0][1], b"Subject: hello there\r\n\r\n")
        typ, data = c.fetch("1", "(ENVELOPE)")
        self.assertIn(b'"hello there"', data[0])
        c.store("1", "+FLAGS", "(\\Seen $Important)")
        typ, data = c.fetch("1", "(FLAGS)")
        self.assertIn(b"\\Seen", data[0])
        self.assertIn(b"$Important", data[0])
        for crit, want in (("SUBJECT hello", b"1"), ("BODY pineapple", b"1"),
                           ("FROM alice", b"1"), ("UNSEEN", b""), ("KEYWORD $Important", b"1"),
                           ("NOT SEEN", b""), ("OR DELETED FLAGGED", b"1"),
                           ("SENTON 2-Jan-2024", b"1"), ("LARGER 100000", b"")):
            typ, data = c.search(None, crit)
            self.assertEqual(data[0], want, crit)
        typ, data = c.uid("SEARCH", None, "ALL")
        self.assertEqual(data[0], b"1")
        c.logout()

    def test_05_copy_move_expunge(self):
        c = self.login()
        c.create("A")
        c.create("B")
        for i in range(5):
            c.append("A", None, None, MSG.replace(b"pineapple", b"item%d" % i))
        c.select("A")
        typ, data = c.copy("1:2", "B")
        self.assertIn(b"COPYUID", data[0])
        typ, data = c.uid("MOVE", "3", "B")
        self.assertEqual(typ, "OK")
        typ, data = c.store("1", "+FLAGS", "\\Deleted")
        typ, data = c.expunge()
        self.assertEqual(data[-1], b"1")  # earlier items: the MOVE's expunge
        typ, data = c.select("A")
        self.assertEqual(data[0], b"3")
        typ, data = c.select("B")
        self.assertEqual(data[0], b"3")
        typ, data = c.status("B", "(MESSAGES UIDNEXT UNSEEN)")
        self.assertIn(b"MESSAGES 3", data[0])
        c.logout()

    def test_06_idle_hears_other_session(self):
        a = self.login()
        b = self.login()
        a.create("Idle")
        a.select("Idle")
        tag = a._new_tag()
        a.send(tag + b" IDLE\r\n")
        self.assertTrue(a.readline().startswith(b"+"))
        b.append("Idle", None, None, MSG)
        a.sock.settimeout(10)
        line = a.readline()
        self.assertRegex(line, rb"^\* 1 EXISTS")
        a.send(b"DONE\r\n")
        while True:
            line = a.readline()
            if line.startswith(tag):
                break
        self.assertIn(b"OK", line)
        a.logout()
        b.logout()

    def test_07_bad_input_keeps_session(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        f = s.makefile("rb")
        self.assertTrue(f.readline().startswith(b"* OK"))
        for junk in (b"a1 FROBNICATE\r\n", b"\r\n", b"a2 LOGIN\r\n", b"a3 SELECT INBOX\r\n",
                     b"\x00\xff\xfe garbage\r\n", b"a4 LOGIN {5}x\r\n"):
            s.sendall(junk)
            line = f.readline()
            self.assertTrue(b"BAD" in line or b"NO" in line, (junk, line))
        s.sendall(b"a5 NOOP\r\n")
        self.assertTrue(f.readline().startswith(b"a5 OK"))
        s.sendall(b"a6 LOGIN " + b"x" * 20000 + b"\r\n")
        line = f.readline()
        self.assertIn(b"BAD", line)
        s.sendall(b"a7 NOOP\r\n")
        self.assertTrue(f.readline().startswith(b"a7 OK"))
        s.close()

    def test_08_tls_993_and_starttls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = imaplib.IMAP4_SSL("127.0.0.1", self.node.ports["imaps"], ssl_context=ctx)
        c.login("bob@example.org", "s3cret-pw")
        c.select("INBOX")
        c.logout()
        c = imaplib.IMAP4("127.0.0.1", self.port)
        c.starttls(ssl_context=ctx)
        c.login("bob@example.org", "s3cret-pw")
        c.logout()

    def test_10_subscribed_without_mailbox(self):
        c = self.login()
        c.subscribe("Ghost")
        typ, data = c.lsub()
        line = [l for l in data if l and l.endswith(b'"Ghost"') or l.endswith(b" Ghost")]
        self.assertEqual(len(line), 1, data)
        self.assertIn(b"\\Noselect", line[0])
        typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"')
        typ, data = c._untagged_response(typ, data, "LIST")
        ghost = [l for l in data if l and b"Ghost" in l]
        self.assertEqual(len(ghost), 1, data)
        self.assertIn(b"\\NonExistent", ghost[0])
        self.assertIn(b"\\Subscribed", ghost[0])
        inbox = [l for l in data if l and b"INBOX" in l]
        self.assertEqual(len(inbox), 1, data)
        c.logout()

    def test_09_authenticate_plain(self):
        c = imaplib.IMAP4("127.0.0.1", self.port)
        typ, _ = c.authenticate("PLAIN", lambda _: b"\0bob@example.org\0s3cret-pw")
        self.assertEqual(typ, "OK")
        c.logout()


if __name__ == "__main__":
    unittest.main(verbosity=2)
