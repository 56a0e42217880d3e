#!/usr/bin/env python3
"""Haven's smtp service driven by Python's smtplib, a client nobody here
wrote, and every message read back over IMAP (imaplib):

- MX (port 25 of the instance): delivery to an account, to an alias, to
  several recipients in one transaction; an unknown local address is
  refused at RCPT with 550 5.1.1 and never bounced later; a domain not
  hosted here is refused (no open relay); the ESMTP extensions the issue
  names are offered; 8BITMIME and SMTPUTF8 bytes arrive unchanged; BDAT
  (CHUNKING); DSN parameters are accepted.
- Submission (587): no mail before AUTH (530), a wrong password is refused
  (535), STARTTLS then AUTH PLAIN and AUTH LOGIN; implicit TLS on 465.
- What arrives is exactly what was sent, with the added trace headers
  (Return-Path, Delivered-To, Received) in front and nothing else changed.

The instance's certificate is self-signed: TLS is not verified. Waits for
arrival poll with generous limits; no test asserts a duration.
"""
import os
import smtplib
import ssl
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

ALICE, ALICE_PW = "alice@example.org", "al1ce-pw"
BOB, BOB_PW = "bob@example.org", "b0b-pw"
CAROL, CAROL_PW = "carol@example.net", "car0l-pw"
ADDED = (b"return-path", b"delivered-to", b"received")
ARRIVAL_TIMEOUT = 60


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(subject, body="Hello.\r\n", sender="ext@remote.test", to=BOB, extra=b""):
    mid = "<%s@client.test>" % uuid.uuid4().hex
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: %s\r\n"
            "Date: Tue, 25 Nov 2025 12:00:00 +0000\r\n" % (sender, to, subject, mid)).encode()
    if isinstance(body, str):
        body = body.encode()
    return mid, head + extra + b"\r\n" + body


def split_added(raw):
    """(names of the header fields in front that the server added, the rest)."""
    pos, names = 0, []
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            break
        name = raw[pos:eol].split(b":", 1)[0].strip().lower()
        if name not in ADDED or b":" not in raw[pos:eol]:
            break
        names.append(name)
        pos = eol + 2
        while raw[pos:pos + 1] in (b" ", b"\t"):  # folded continuation
            eol = raw.find(b"\r\n", pos)
            pos = eol + 2
    return names, raw[pos:]


class SmtpLib(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Instance(keep=os.environ.get("KEEP") == "1")
        n = cls.node
        try:
            for addr, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (CAROL, CAROL_PW)):
                n.add_user(addr, pw)
            n.add_alias("info@example.org", ALICE)
            n.add_alias("team@example.org", "info@example.org")  # an alias of an alias
            n.start()
            n.wait_smtp()
        except Exception:
            print("havend log:\n" + n.read_log())
            n.keep = True
            n.close()
            raise
        cls.failed = False

    @classmethod
    def tearDownClass(cls):
        if cls.failed:
            print("havend log:\n" + cls.node.read_log())
            cls.node.keep = True
            print("instance kept in", cls.node.dir)
        cls.node.close()

    def run(self, result=None):
        r = super().run(result)
        if result is not None and (result.failures or result.errors):
            type(self).failed = True
        return r

    # --- helpers ---
    def mx(self):
        s = smtplib.SMTP("127.0.0.1", self.node.ports["smtp"], local_hostname="client.test",
                         timeout=30)
        s.ehlo()
        return s

    def fetch_by_msgid(self, account, password, mid, timeout=ARRIVAL_TIMEOUT):
        """Every copy of the message with this Message-ID in the account's
        INBOX, once at least one is there (or [] after timeout)."""
        deadline = time.time() + timeout
        while True:
            c = self.node.imap(account, password)
            try:
                c.select("INBOX", readonly=True)
                typ, data = c.uid("SEARCH", "HEADER", "Message-ID", mid)
                self.assertEqual(typ, "OK")
                uids = data[0].split()
                if uids:
                    out = []
                    for u in uids:
                        typ, d = c.uid("FETCH", u, "(BODY.PEEK[])")
                        out.append(d[0][1])
                    return out
            finally:
                c.logout()
            if time.time() > deadline:
                return []
            time.sleep(0.2)

    def assert_arrived_exactly(self, account, password, mid, sent):
        got = self.fetch_by_msgid(account, password, mid)
        self.assertEqual(len(got), 1, "%s: want exactly one copy of %s" % (account, mid))
        names, rest = split_added(got[0])
        self.assertEqual(rest, sent, "the message must arrive byte for byte as sent")
        self.assertEqual(sorted(names), sorted(ADDED),
                         "want one Return-Path, Delivered-To and Received in front: %r" % names)
        return got[0]

    # --- MX ---
    def test_ehlo_extensions(self):
        with self.mx() as s:
            for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                        "starttls", "chunking", "dsn"):
                self.assertTrue(s.has_extn(ext), "EHLO must offer %s: %r" % (ext, s.esmtp_features))
            self.assertTrue(int(s.esmtp_features["size"] or 0) > 0, "SIZE names the limit")

    def test_mx_delivery_to_account(self):
        mid, msg = message("plain delivery")
        with self.mx() as s:
            refused = s.sendmail("ext@remote.test", [BOB], msg)
        self.assertEqual(refused, {})
        raw = self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)
        self.assertTrue(raw.lower().startswith(b"return-path: <ext@remote.test>\r\n"), raw[:200])
        self.assertIn(b"delivered-to: " + BOB.encode(), raw.lower())

    def test_alias_delivery(self):
        for alias in ("info@example.org", "team@example.org", "Info@Example.ORG"):
            mid, msg = message("to the alias " + alias, to=alias)
            with self.mx() as s:
                self.assertEqual(s.sendmail("ext@remote.test", [alias], msg), {})
            self.assert_arrived_exactly(ALICE, ALICE_PW, mid, msg)

    def test_multiple_recipients(self):
        mid, msg = message("three recipients, one transaction")
        with self.mx() as s:
            self.assertEqual(s.sendmail("ext@remote.test", [ALICE, BOB, CAROL], msg), {})
        for acct, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (CAROL, CAROL_PW)):
            raw = self.assert_arrived_exactly(acct, pw, mid, msg)
            self.assertIn(b"delivered-to: " + acct.encode(), raw.lower())

    def test_unknown_recipient_refused_at_rcpt(self):
        before = self.node.imap_count(ALICE, ALICE_PW)
        with self.mx() as s:
            s.mail(ALICE)
            code, text = s.rcpt("nosuchuser@example.org")
            self.assertEqual(code, 550, text)
            self.assertTrue(text.startswith(b"5.1.1"), text)
            # A domain that is not hosted: no relaying for strangers.
            code, text = s.rcpt("someone@elsewhere.test")
            self.assertEqual(code, 550, text)
            self.assertTrue(text.startswith(b"5.7.1"), text)
            s.rset()
            # In a transaction with a good recipient: that one gets it.
            mid, msg = message("one good, one unknown", sender=ALICE)
            refused = s.sendmail(ALICE, [BOB, "nosuchuser@example.org"], msg)
        self.assertEqual(list(refused), ["nosuchuser@example.org"])
        self.assertEqual(refused["nosuchuser@example.org"][0], 550)
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)
        # Never a later bounce: the local sender's INBOX got nothing.
        mid2, msg2 = message("marker after the refusal", sender=ALICE, to=ALICE)
        with self.mx() as s:
            s.sendmail("ext@remote.test", [ALICE], msg2)
        self.assert_arrived_exactly(ALICE, ALICE_PW, mid2, msg2)
        time.sleep(1)
        self.assertEqual(self.node.imap_count(ALICE, ALICE_PW), before + 1,
                         "the refused recipient must not cause a bounce to the sender")

    def test_8bitmime_and_smtputf8(self):
        body = "Grüße aus Köln – ünïcödé body, 8 bit.\r\n".encode("utf-8")
        mid, msg = message("8bit body", body=body)
        with self.mx() as s:
            self.assertEqual(s.sendmail("ext@remote.test", [BOB], msg,
                                        mail_options=["BODY=8BITMIME"]), {})
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)
        # SMTPUTF8: a UTF-8 sender address and UTF-8 header values.
        sender = "δοκιμή@παράδειγμα.test"
        mid, msg = message("ünïcödé Subject ✓", body=body, sender=sender)
        with self.mx() as s:
            self.assertEqual(s.sendmail(sender, [BOB], msg,
                                        mail_options=["SMTPUTF8", "BODY=8BITMIME"]), {})
        raw = self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)
        self.assertTrue(raw.startswith(("Return-Path: <%s>" % sender).encode("utf-8"))
                        or raw.lower().startswith(("return-path: <%s>" % sender).encode("utf-8")),
                        raw[:200])

    def test_bdat_chunking(self):
        mid, msg = message("sent with BDAT", body="chunk one\r\n" * 50 + "chunk two\r\n" * 50)
        half = len(msg) // 2
        with self.mx() as s:
            self.assertTrue(s.has_extn("chunking"))
            self.assertEqual(s.mail("ext@remote.test")[0], 250)
            self.assertEqual(s.rcpt(BOB)[0], 250)
            s.send(b"BDAT %d\r\n" % half + msg[:half])
            code, text = s.getreply()
            self.assertEqual(code, 250, text)
            s.send(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
            code, text = s.getreply()
            self.assertEqual(code, 250, text)
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)

    def test_dsn_parameters_accepted(self):
        mid, msg = message("with DSN parameters")
        with self.mx() as s:
            self.assertEqual(s.sendmail("ext@remote.test", [BOB], msg,
                                        mail_options=["RET=HDRS", "ENVID=bench-42"],
                                        rcpt_options=["NOTIFY=FAILURE,DELAY",
                                                      "ORCPT=rfc822;" + BOB]), {})
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)

    def test_size_declared_too_big(self):
        with self.mx() as s:
            limit = int(s.esmtp_features["size"])
            code, text = s.mail("ext@remote.test", ["SIZE=%d" % (limit + 1)])
            self.assertEqual(code, 552, text)

    # --- submission ---
    def submission(self):
        s = smtplib.SMTP("127.0.0.1", self.node.ports["submission"],
                         local_hostname="client.test", timeout=30)
        s.ehlo()
        return s

    def test_submission_requires_auth(self):
        with self.submission() as s:
            code, text = s.mail(ALICE)
            self.assertEqual(code, 530, text)
            self.assertTrue(text.startswith(b"5.7.0"), text)

    def test_submission_wrong_password(self):
        with self.submission() as s:
            s.starttls(context=tls_context())
            s.ehlo()
            with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                s.login(ALICE, "not-the-password")
            self.assertEqual(cm.exception.smtp_code, 535)

    def submit_with(self, mechanism):
        mid, msg = message("submitted with AUTH " + mechanism, sender=ALICE, to=BOB)
        with self.submission() as s:
            self.assertTrue(s.has_extn("starttls"))
            code, _ = s.starttls(context=tls_context())
            self.assertEqual(code, 220)
            s.ehlo()
            mechs = (s.esmtp_features.get("auth") or "").upper().split()
            self.assertIn(mechanism, mechs, "AUTH %s must be offered after STARTTLS" % mechanism)
            s.user, s.password = ALICE, ALICE_PW
            auth = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            code, text = s.auth(mechanism, auth, initial_response_ok=(mechanism == "PLAIN"))
            self.assertEqual(code, 235, text)
            self.assertEqual(s.sendmail(ALICE, [BOB, CAROL], msg), {})
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)
        self.assert_arrived_exactly(CAROL, CAROL_PW, mid, msg)

    def test_submission_starttls_auth_plain(self):
        self.submit_with("PLAIN")

    def test_submission_starttls_auth_login(self):
        self.submit_with("LOGIN")

    def test_submissions_implicit_tls(self):
        mid, msg = message("over implicit TLS", sender=ALICE, to=BOB)
        with smtplib.SMTP_SSL("127.0.0.1", self.node.ports["submissions"],
                              local_hostname="client.test", context=tls_context(),
                              timeout=30) as s:
            s.ehlo()
            s.login(ALICE, ALICE_PW)
            self.assertEqual(s.sendmail(ALICE, [BOB], msg), {})
        self.assert_arrived_exactly(BOB, BOB_PW, mid, msg)


if __name__ == "__main__":
    unittest.main(verbosity=2)
