#!/usr/bin/env python3
"""The smtp and lmtp services at the protocol level, against a real havend:
Python's smtplib for the ordinary paths (EHLO, AUTH, STARTTLS, implicit
TLS) and raw sockets for what a library would never send (pipelined
groups, bare LF smuggling, NUL bytes, over-long lines, commands out of
order, BDAT). Every reply checked is the one docs/smtp.md promises; what
was accepted is read back over IMAP."""
import os
import smtplib
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

PW = "s3cret-pw"


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the instance's certificate is self-signed
    return ctx


class Raw:
    """A raw SMTP/LMTP connection that reads whole replies."""

    def __init__(self, port, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if tls:
            self.sock = tls_ctx().wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("connection closed; buffered %r" % self.buf)
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        """(code, [lines]) of one possibly multi-line reply."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self):
        """True when the server has closed the connection (after any
        buffered replies were read)."""
        try:
            self.sock.settimeout(10)
            return self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.sock.close()


class SmtpProtocolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        n = cls.node = Instance()
        n.set_conf("smtp_auth_fail_delay_ms", "10")
        n.set_conf("smtp_max_message_size", "200000")
        n.set_conf("smtp_max_recipients", "5")
        n.add_user("bob@example.org", PW)
        n.add_user("carol@example.org", PW)
        n.add_user("restoring@example.org", PW)
        n.haven("user", "state", "restoring@example.org", "restoring")
        n.haven("user", "add", "tiny@example.org", "--password-stdin", "--quota", "2000",
                input=PW + "\n")
        n.start()
        n.wait_smtp()
        n.wait_port(n.ports["lmtp"])
        cls.mx, cls.sub = n.ports["smtp"], n.ports["submission"]
        cls.subs, cls.lmtp = n.ports["submissions"], n.ports["lmtp"]

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def subjects(self, addr):
        return [v for _, v in self.node.imap_header(addr, PW, "Subject")]

    def wait_subject(self, addr, subject, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if subject in self.subjects(addr):
                return True
            time.sleep(0.2)
        return False

    # --- greeting and EHLO ---

    def test_ehlo_keywords_mx(self):
        s = smtplib.SMTP("127.0.0.1", self.mx, timeout=30)
        code, _ = s.ehlo("client.example")
        self.assertEqual(code, 250)
        for k in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                  "starttls", "chunking", "dsn"):
            self.assertIn(k, s.esmtp_features)
        self.assertEqual(s.esmtp_features["size"], "200000")
        self.assertNotIn("auth", s.esmtp_features)  # no AUTH on the MX port
        s.quit()

    def test_ehlo_keywords_submission(self):
        s = smtplib.SMTP("127.0.0.1", self.sub, timeout=30)
        s.ehlo("client.example")
        # plaintext from loopback is allowed by haven init's config
        self.assertIn("auth", s.esmtp_features)
        self.assertIn("PLAIN", s.esmtp_features["auth"])
        self.assertIn("LOGIN", s.esmtp_features["auth"])
        self.assertIn("starttls", s.esmtp_features)
        s.quit()

    def test_helo_is_plain(self):
        r = Raw(self.mx)
        self.assertTrue(r.greeting[1][0].startswith("localhost"))
        self.assertEqual(r.cmd("HELO client.example"), (250, ["localhost"]))
        self.assertEqual(r.cmd("QUIT")[0], 221)
        r.close()

    # --- a whole message through the queue into the mailbox ---

    def test_smtplib_end_to_end(self):
        s = smtplib.SMTP("127.0.0.1", self.mx, timeout=30)
        refused = s.sendmail("alice@remote.example", ["bob@example.org"],
                             b"Subject: e2e-1\r\n\r\nhello\r\n.leading dot\r\n")
        self.assertEqual(refused, {})
        s.quit()
        self.assertTrue(self.wait_subject("bob@example.org", "e2e-1"))
        raw = [m for _, m in self.node.imap_fetch("bob@example.org", PW)
               if b"e2e-1" in m][0]
        self.assertIn(b"\r\n.leading dot\r\n", raw)  # dot-stuffing undone once
        self.assertTrue(raw.startswith(b"Return-Path: <alice@remote.example>\r\n"))
        self.assertIn(b"Delivered-To: bob@example.org\r\n", raw)
        self.assertIn(b"Received: from ", raw)

    # --- recipients ---

    def test_unknown_recipient_and_relay(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        self.assertEqual(r.cmd("MAIL FROM:<a@remote.example>")[0], 250)
        code, lines = r.cmd("RCPT TO:<nobody@example.org>")
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.1.1"))
        code, lines = r.cmd("RCPT TO:<someone@elsewhere.example>")
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.7.1"))
        self.assertIn("elaying denied", lines[0])
        # an account that is being restored is accepted (the queue holds it)
        self.assertEqual(r.cmd("RCPT TO:<restoring@example.org>")[0], 250)
        self.assertEqual(r.cmd("RCPT TO:<BOB@Example.ORG>")[0], 250)
        r.cmd("QUIT")
        r.close()

    def test_too_many_recipients(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.cmd("MAIL FROM:<a@remote.example>")
        for _ in range(5):
            self.assertEqual(r.cmd("RCPT TO:<bob@example.org>")[0], 250)
        code, lines = r.cmd("RCPT TO:<bob@example.org>")
        self.assertEqual(code, 452)
        self.assertTrue(lines[0].startswith("4.5.3"))
        r.close()

    # --- PIPELINING ---

    def test_pipelining(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(5)], [250, 250, 550, 250, 354])
        r.send(b"Subject: piped\r\n\r\nx\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n"
               b"DATA\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 250)
        self.assertIn("queued as", lines[0])
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354])
        r.send(b"Subject: piped-bounce-sender\r\n\r\ny\r\n.\r\nQUIT\r\n")
        self.assertEqual(r.reply()[0], 250)
        self.assertEqual(r.reply()[0], 221)
        r.close()
        self.assertTrue(self.wait_subject("carol@example.org", "piped"))
        self.assertTrue(self.wait_subject("bob@example.org", "piped-bounce-sender"))

    # --- sizes and lines ---

    def test_size_refused_at_mail(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        code, lines = r.cmd("MAIL FROM:<a@remote.example> SIZE=200001")
        self.assertEqual(code, 552)
        self.assertTrue(lines[0].startswith("5.3.4"))
        self.assertEqual(r.cmd("MAIL FROM:<a@remote.example> SIZE=1000")[0], 250)
        r.close()

    def test_oversize_data_refused_and_session_goes_on(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.cmd("MAIL FROM:<a@remote.example>")
        r.cmd("RCPT TO:<bob@example.org>")
        self.assertEqual(r.cmd("DATA")[0], 354)
        line = b"x" * 998 + b"\r\n"
        r.send(b"Subject: too-big\r\n\r\n" + line * 250 + b".\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 552)
        self.assertTrue(lines[0].startswith("5.3.4"))
        self.assertEqual(r.cmd("NOOP")[0], 250)
        r.close()
        self.assertNotIn("too-big", self.subjects("bob@example.org"))

    def test_long_lines(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        code, lines = r.cmd("NOOP " + "a" * 600)
        self.assertEqual(code, 500)
        self.assertTrue(lines[0].startswith("5.5.2"))
        r.cmd("MAIL FROM:<a@remote.example>")
        r.cmd("RCPT TO:<bob@example.org>")
        r.cmd("DATA")
        r.send(b"Subject: long-line\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 550)
        self.assertIn("1000", lines[0])
        self.assertEqual(r.cmd("RSET")[0], 250)
        r.close()

    # --- bad bytes ---

    def test_bare_lf_smuggling_refused(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354])
        # The classic: "\n.\n" (or "\n.\r\n") ends the message for a lax
        # server, and what follows becomes a second, forged message.
        r.send(b"Subject: smuggle-outer\r\n\r\nhi\n.\r\nMAIL FROM:<ceo@example.org>\r\n"
               b"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: smuggle-inner\r\n\r\nforged\r\n"
               b".\r\nNOOP\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.6.11"))
        # the smuggled commands were data: the next reply is the NOOP's
        self.assertEqual(r.reply(), (250, ["2.0.0 Ok"]))
        # a bare CR variant
        r.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354])
        r.send(b"Subject: smuggle-cr\r\n\r\nhi\r.\r\r\n.\r\n")
        self.assertEqual(r.reply()[0], 550)
        r.cmd("QUIT")
        r.close()
        # a good message afterwards shows the others were not delivered
        s = smtplib.SMTP("127.0.0.1", self.mx, timeout=30)
        s.sendmail("a@remote.example", ["bob@example.org"], b"Subject: after-smuggle\r\n\r\n.\r\n")
        s.quit()
        self.assertTrue(self.wait_subject("bob@example.org", "after-smuggle"))
        subj = self.subjects("bob@example.org")
        for bad in ("smuggle-outer", "smuggle-inner", "smuggle-cr"):
            self.assertNotIn(bad, subj)

    def test_nul_bytes(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.send(b"NO\x00OP\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 500)
        self.assertIn("NUL", lines[0])
        r.cmd("MAIL FROM:<a@remote.example>")
        r.cmd("RCPT TO:<bob@example.org>")
        r.cmd("DATA")
        r.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
        self.assertEqual(r.reply()[0], 550)
        # bare LF in a command: refused, and the session goes on
        r.send(b"NOOP\n")
        self.assertEqual(r.reply()[0], 500)
        self.assertEqual(r.cmd("NOOP")[0], 250)
        r.close()

    def test_out_of_order(self):
        r = Raw(self.mx)
        self.assertEqual(r.cmd("MAIL FROM:<a@remote.example>")[0], 503)
        r.cmd("EHLO c")
        self.assertEqual(r.cmd("RCPT TO:<bob@example.org>")[0], 503)
        self.assertEqual(r.cmd("DATA")[0], 503)
        r.cmd("MAIL FROM:<a@remote.example>")
        self.assertEqual(r.cmd("MAIL FROM:<a@remote.example>")[0], 503)
        self.assertEqual(r.cmd("DATA")[0], 554)  # no valid recipients
        r.cmd("RCPT TO:<bob@example.org>")
        self.assertEqual(r.cmd("STARTTLS")[0], 503)
        self.assertEqual(r.cmd("RSET")[0], 250)
        self.assertEqual(r.cmd("RCPT TO:<bob@example.org>")[0], 503)
        r.close()

    def test_too_many_errors_closes(self):
        r = Raw(self.mx)
        codes = [r.cmd("BOGUS")[0] for _ in range(19)]
        self.assertEqual(set(codes), {500})
        code, lines = r.cmd("BOGUS")
        self.assertEqual(code, 500)
        self.assertEqual(r.reply()[0], 421)
        self.assertTrue(r.closed())
        r.close()

    # --- BDAT ---

    def test_bdat(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        body1 = b"Subject: bdat-1\r\n\r\nfirst "
        body2 = b"chunk\r\n.not stuffed\r\n"
        r.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\n"
               b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (len(body1), body1, len(body2), body2))
        codes = [r.reply() for _ in range(4)]
        self.assertEqual([c for c, _ in codes], [250, 250, 250, 250])
        self.assertIn("queued as", codes[3][1][0])
        # BDAT without a transaction: the chunk is read past, then refused
        r.send(b"BDAT 9 LAST\r\nRSET\r\nxxx")
        self.assertEqual(r.reply()[0], 503)
        self.assertEqual(r.cmd("NOOP")[0], 250)
        # an unreadable chunk size loses the stream: answered, then closed
        r.send(b"BDAT many\r\n")
        self.assertEqual(r.reply()[0], 501)
        self.assertEqual(r.reply()[0], 421)
        r.close()
        self.assertTrue(self.wait_subject("bob@example.org", "bdat-1"))
        raw = [m for _, m in self.node.imap_fetch("bob@example.org", PW) if b"bdat-1" in m][0]
        self.assertTrue(raw.endswith(b"first chunk\r\n.not stuffed\r\n"))

    # --- submission ---

    def test_submission_requires_auth(self):
        s = smtplib.SMTP("127.0.0.1", self.sub, timeout=30)
        s.ehlo("c")
        code, msg = s.mail("bob@example.org")
        self.assertEqual(code, 530)
        self.assertTrue(msg.startswith(b"5.7.0"))
        s.quit()

    def test_auth_plain_and_login(self):
        s = smtplib.SMTP("127.0.0.1", self.sub, timeout=30)
        s.ehlo("c")
        with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
            s.login("bob@example.org", "wrong")
        self.assertEqual(e.exception.smtp_code, 535)
        s.user, s.password = "bob@example.org", PW
        code, _ = s.auth("PLAIN", s.auth_plain)
        self.assertEqual(code, 235)
        # authenticated: relaying to a remote domain is allowed
        self.assertEqual(s.mail("bob@example.org")[0], 250)
        self.assertEqual(s.rcpt("someone@remote.example")[0], 250)
        s.rset()
        s.quit()
        s = smtplib.SMTP("127.0.0.1", self.sub, timeout=30)
        s.ehlo("c")
        s.user, s.password = "bob@example.org", PW
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        self.assertEqual(code, 235)
        s.sendmail("bob@example.org", ["carol@example.org"], b"Subject: submitted\r\n\r\nhi\r\n")
        s.quit()
        self.assertTrue(self.wait_subject("carol@example.org", "submitted"))

    def test_auth_not_on_mx(self):
        r = Raw(self.mx)
        r.cmd("EHLO c")
        self.assertEqual(r.cmd("AUTH PLAIN AGJvYgBzM2NyZXQtcHc=")[0], 502)
        r.close()

    def test_auth_cancel_and_bad_base64(self):
        r = Raw(self.sub)
        r.cmd("EHLO c")
        self.assertEqual(r.cmd("AUTH PLAIN")[0], 334)
        self.assertEqual(r.cmd("*")[0], 501)
        self.assertEqual(r.cmd("AUTH PLAIN !!!!")[0], 501)
        self.assertEqual(r.cmd("AUTH CRAM-MD5")[0], 504)
        r.close()

    # --- TLS ---

    def test_starttls_mx_and_submission(self):
        for port in (self.mx, self.sub):
            s = smtplib.SMTP("127.0.0.1", port, timeout=30)
            s.ehlo("c")
            code, _ = s.starttls(context=tls_ctx())
            self.assertEqual(code, 220)
            s.ehlo("c")
            self.assertNotIn("starttls", s.esmtp_features)
            if port == self.sub:
                s.login("bob@example.org", PW)
                s.sendmail("bob@example.org", ["carol@example.org"],
                           b"Subject: over-starttls\r\n\r\nhi\r\n")
            else:
                s.sendmail("x@remote.example", ["carol@example.org"],
                           b"Subject: mx-over-starttls\r\n\r\nhi\r\n")
            s.quit()
        self.assertTrue(self.wait_subject("carol@example.org", "over-starttls"))
        self.assertTrue(self.wait_subject("carol@example.org", "mx-over-starttls"))

    def test_starttls_drops_pipelined_plaintext(self):
        # Commands sent in the same packet as STARTTLS must not be run as
        # if they came over TLS.
        r = Raw(self.mx)
        r.cmd("EHLO c")
        r.send(b"STARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
        self.assertEqual(r.reply()[0], 220)
        tls = tls_ctx().wrap_socket(r.sock)
        tls.sendall(b"MAIL FROM:<a@b.example>\r\n")
        self.assertTrue(tls.recv(1000).startswith(b"503"))  # EHLO first: state was reset
        tls.close()

    def test_implicit_tls(self):
        s = smtplib.SMTP_SSL("127.0.0.1", self.subs, context=tls_ctx(), timeout=30)
        s.ehlo("c")
        self.assertIn("auth", s.esmtp_features)
        self.assertNotIn("starttls", s.esmtp_features)
        s.login("bob@example.org", PW)
        s.sendmail("bob@example.org", ["carol@example.org"], b"Subject: implicit-tls\r\n\r\n.\r\n")
        s.quit()
        self.assertTrue(self.wait_subject("carol@example.org", "implicit-tls"))

    # --- LMTP ---

    def test_lmtp_per_recipient_replies(self):
        r = Raw(self.lmtp)
        self.assertIn("LMTP", r.greeting[1][0])
        self.assertEqual(r.cmd("EHLO c")[0], 500)
        code, lines = r.cmd("LHLO queue.example")
        self.assertEqual(code, 250)
        self.assertIn("XHAVEN-DID", lines)
        self.assertIn("PIPELINING", lines)
        r.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<restoring@example.org>\r\n"
               b"RCPT TO:<carol@example.org>\r\nDATA\r\n")
        replies = [r.reply() for _ in range(6)]
        self.assertEqual([c for c, _ in replies], [250, 250, 550, 450, 250, 354])
        self.assertEqual(replies[2][1][0][:5], "5.1.1")
        self.assertEqual(replies[3][1][0], "4.2.1 <restoring@example.org> account is restoring")
        r.send(b"Subject: lmtp-1\r\n\r\nhello\r\n.\r\n")
        first, second = r.reply(), r.reply()
        self.assertEqual(first[0], 250)
        self.assertIn("<bob@example.org>", first[1][0])
        self.assertEqual(second[0], 250)
        self.assertIn("<carol@example.org>", second[1][0])
        self.assertEqual(r.cmd("QUIT")[0], 221)
        r.close()
        # LMTP is synchronous: in the mailbox at once
        self.assertIn("lmtp-1", self.subjects("bob@example.org"))
        self.assertIn("lmtp-1", self.subjects("carol@example.org"))

    def test_lmtp_did_dedupes(self):
        def deliver():
            r = Raw(self.lmtp)
            r.cmd("LHLO q")
            r.cmd("MAIL FROM:<a@remote.example>")
            self.assertEqual(r.cmd("RCPT TO:<bob@example.org> XHAVEN-DID=00000000000000aa-0")[0],
                             250)
            self.assertEqual(r.cmd("DATA")[0], 354)
            r.send(b"Subject: did-once\r\n\r\nhi\r\n.\r\n")
            code, lines = r.reply()
            r.close()
            self.assertEqual(code, 250)
            return lines[0]
        deliver()
        second = deliver()
        self.assertIn("already delivered", second)
        self.assertEqual(self.subjects("bob@example.org").count("did-once"), 1)

    def test_lmtp_quota(self):
        r = Raw(self.lmtp)
        r.cmd("LHLO q")
        r.cmd("MAIL FROM:<a@remote.example>")
        self.assertEqual(r.cmd("RCPT TO:<tiny@example.org>")[0], 250)
        self.assertEqual(r.cmd("DATA")[0], 354)
        r.send(b"Subject: fits\r\n\r\nsmall\r\n.\r\n")
        self.assertEqual(r.reply()[0], 250)
        # now over: refused at RCPT when SIZE says so, and at the data
        r.cmd("MAIL FROM:<a@remote.example> SIZE=5000")
        code, lines = r.cmd("RCPT TO:<tiny@example.org>")
        self.assertEqual(code, 452)
        self.assertTrue(lines[0].startswith("4.2.2"))
        r.cmd("RSET")
        r.cmd("MAIL FROM:<a@remote.example>")
        self.assertEqual(r.cmd("RCPT TO:<tiny@example.org>")[0], 250)
        r.cmd("DATA")
        r.send(b"Subject: too-much\r\n\r\n" + (b"z" * 98 + b"\r\n") * 30 + b".\r\n")
        code, lines = r.reply()
        self.assertEqual(code, 452)
        self.assertTrue(lines[0].startswith("4.2.2"))
        r.close()
        self.assertEqual(self.subjects("tiny@example.org"), ["fits"])

    def test_lmtp_bdat_and_refusal_replies(self):
        r = Raw(self.lmtp)
        r.cmd("LHLO q")
        body = b"Subject: lmtp-bdat\r\n\r\nx\r\n"
        r.send(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
               b"BDAT %d LAST\r\n%s" % (len(body), body))
        self.assertEqual([r.reply()[0] for _ in range(5)], [250, 250, 250, 250, 250])
        # a refused message gets one refusal per recipient too
        r.send(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
               b"DATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(4)], [250, 250, 250, 354])
        r.send(b"Subject: lmtp-bad\r\n\r\nbare\nlf\r\n.\r\n")
        self.assertEqual([r.reply()[0] for _ in range(2)], [550, 550])
        r.close()
        self.assertIn("lmtp-bdat", self.subjects("carol@example.org"))
        self.assertNotIn("lmtp-bad", self.subjects("carol@example.org"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
