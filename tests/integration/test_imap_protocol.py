#!/usr/bin/env python3
"""IMAP at the protocol level: raw bytes over a socket to a real havend,
and the exact answers the RFCs ask for.

Covered: STARTTLS and implicit TLS (993), LOGIN only over TLS unless
plaintext from loopback is allowed, failed logins answered late (and the
delay doubling per failure), NO [UNAVAILABLE] for accounts that are not
active, IDLE, several sessions on one mailbox seeing each other's EXISTS /
EXPUNGE / FETCH FLAGS (and a change made by another process), CONDSTORE
and QRESYNC, UIDPLUS, MOVE, ESEARCH, LIST-EXTENDED / LIST-STATUS,
SPECIAL-USE, literals over the limits, and malformed commands: each gets
BAD and the session goes on.

No assertion depends on timing: a read waits for a line with a generous
timeout, and "not yet answered" is shown by ordering (another session's
answer arrives first).
"""
import os
import re
import socket
import ssl
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

TIMEOUT = 60  # seconds a read may wait for a line; generous on purpose
MAX_MESSAGE = 200000  # store_max_message_size of the main instance (APPENDLIMIT)
USER, PASS = "proto@example.org", "pr0to-pw"


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the instance's certificate is self-signed
    return ctx


def message(i, extra=b""):
    return (b"From: Sender %d <s%d@example.org>\r\nTo: proto@example.org\r\n"
            b"Subject: message number %d\r\nMessage-ID: <%d@proto.example.org>\r\n"
            b"Date: Wed, 3 Jan 2024 10:00:%02d +0000\r\n\r\nbody of message %d\r\n%s"
            % (i, i, i, i, i % 60, i, extra))


class Conn:
    """One IMAP connection spoken by hand."""

    def __init__(self, port, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""
        self.ntag = 0
        self.greeting = self.line()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("server closed the connection; unread: %r" % self.buf)
        self.buf += d

    def line(self):
        """One line without its CRLF."""
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def response(self):
        """One whole response: a line plus the literals it announces,
        returned as (text with each literal replaced by {n}, [literals])."""
        text, lits = b"", []
        while True:
            ln = self.line()
            text += ln
            m = re.search(rb"~?\{(\d+)\}$", ln)
            if not m:
                return text, lits
            lits.append(self.exactly(int(m.group(1))))
            text += b"\r\n"

    def pending(self):
        """True when the server has sent something not read yet; does not
        wait. (A non-blocking read rather than select(): TLS records that
        carry no data, such as session tickets, must not count.)"""
        if self.buf:
            return True
        self.sock.settimeout(0)
        try:
            d = self.sock.recv(65536)
            self.buf += d
            return True  # data, or b"" for a closed connection
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        finally:
            self.sock.settimeout(TIMEOUT)

    def tag(self):
        self.ntag += 1
        return "t%d" % self.ntag

    def cmd(self, text, tag=None):
        """Sends one command; returns (untagged responses, tagged line).
        Each untagged response is a (text, literals) pair."""
        tag = tag or self.tag()
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag):
        untagged = []
        t = tag.encode() + b" "
        while True:
            text, lits = self.response()
            if text.startswith(t):
                return untagged, text[len(t):]
            untagged.append((text, lits))

    def ok(self, text):
        untagged, done = self.cmd(text)
        assert done.startswith(b"OK"), (text, done, untagged)
        return [u[0] for u in untagged], done

    def ok_lits(self, text):
        untagged, done = self.cmd(text)
        assert done.startswith(b"OK"), (text, done, untagged)
        return untagged

    def login(self, user=USER, password=PASS):
        self.ok('LOGIN "%s" "%s"' % (user, password))
        return self

    def append(self, box, msg, flags=""):
        """APPEND with a synchronizing literal; returns the tagged line."""
        tag = self.tag()
        self.send(b"%s APPEND %s %s{%d}\r\n" % (tag.encode(), box.encode(),
                                                 (flags + " ").encode() if flags else b"",
                                                 len(msg)))
        ln = self.line()
        assert ln.startswith(b"+"), ln
        self.send(msg + b"\r\n")
        untagged, done = self.until(tag)
        assert done.startswith(b"OK"), done
        return done


def uid_of(appended):
    m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", appended)
    assert m, appended
    return int(m.group(2))


def untagged_kind(lines, kind):
    return [ln for ln in lines if re.match(rb"\* (\d+ )?" + kind.encode() + rb"\b", ln)]


class Protocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Instance()
        cls.node.set_conf("imap_auth_fail_delay_ms", "10")
        cls.node.set_conf("store_max_message_size", str(MAX_MESSAGE))
        cls.node.add_user(USER, PASS)
        cls.node.add_user("other@example.org", "other-pw")
        for state in ("held", "moving", "restoring"):
            cls.node.add_user("%s@example.org" % state, "pw-" + state)
            cls.node.haven("user", "state", "%s@example.org" % state, state)
        cls.node.start()
        cls.port = cls.node.ports["imap"]
        cls.tls_port = cls.node.ports["imaps"]
        cls.node.wait_port(cls.tls_port)

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def conn(self, tls=False):
        c = Conn(self.tls_port if tls else self.port, tls=tls)
        self.addCleanup(c.close)
        return c

    def session(self):
        return self.conn().login()

    def make_box(self, name, n):
        c = self.session()
        c.ok('CREATE "%s"' % name)
        uids = [uid_of(c.append(name, message(i))) for i in range(1, n + 1)]
        self.assertEqual(uids, list(range(1, n + 1)))
        c.ok("LOGOUT")
        return uids

    # ---- TLS, capabilities, login rules ----

    def test_01_capabilities_plain_loopback(self):
        c = self.conn()
        self.assertRegex(c.greeting, rb"^\* OK \[CAPABILITY [^\]]*IMAP4rev1")
        caps = c.ok("CAPABILITY")[0][0].split()
        for cap in (b"STARTTLS", b"AUTH=PLAIN", b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE",
                    b"QRESYNC", b"ESEARCH", b"LIST-EXTENDED", b"LIST-STATUS", b"SPECIAL-USE",
                    b"LITERAL+", b"ENABLE"):
            self.assertIn(cap, caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        c.login()
        caps = c.ok("CAPABILITY")[0][0].split()
        self.assertIn(b"APPENDLIMIT=%d" % MAX_MESSAGE, caps)
        self.assertNotIn(b"STARTTLS", caps)
        untagged, done = c.cmd("STARTTLS")
        self.assertTrue(done.startswith(b"BAD"), done)  # not after login
        c.ok("NOOP")

    def test_02_implicit_tls_993(self):
        c = self.conn(tls=True)
        self.assertTrue(c.greeting.startswith(b"* OK"))
        caps = c.ok("CAPABILITY")[0][0].split()
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        untagged, done = c.cmd("STARTTLS")
        self.assertTrue(done.startswith(b"BAD"), done)
        c.login()
        lines, _ = c.ok("SELECT INBOX")
        self.assertTrue(untagged_kind(lines, "EXISTS"))
        c.ok("LOGOUT")

    def test_03_starttls_drops_pipelined_cleartext(self):
        c = self.conn()
        # A command pipelined after STARTTLS was sent in clear text: the
        # server must not run it as if it came over TLS.
        c.send(b"s1 STARTTLS\r\ns2 LOGIN proto@example.org pr0to-pw\r\n")
        self.assertTrue(c.line().startswith(b"s1 OK"))
        self.assertEqual(c.buf, b"")
        c.sock = tls_context().wrap_socket(c.sock)
        untagged, done = c.cmd("CAPABILITY", tag="s3")
        self.assertTrue(done.startswith(b"OK"))
        caps = untagged[0][0].split()
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        # Still not logged in: s2 was dropped, and nothing answers it.
        untagged, done = c.cmd("SELECT INBOX", tag="s4")
        self.assertTrue(done.startswith(b"BAD"), done)
        self.assertEqual(untagged, [])
        untagged, done = c.cmd("STARTTLS", tag="s5")
        self.assertTrue(done.startswith(b"BAD"), done)
        c.login()
        c.ok("NOOP")

    def test_04_authenticate_plain_forms(self):
        import base64
        cred = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASS.encode())
        c = self.conn()
        c.ok(b"AUTHENTICATE PLAIN " + cred)  # SASL-IR
        c = self.conn()
        c.send(b"a1 AUTHENTICATE PLAIN\r\n")
        self.assertTrue(c.line().startswith(b"+"))
        c.send(cred + b"\r\n")
        self.assertTrue(c.line().startswith(b"a1 OK"))
        c = self.conn()
        c.send(b"a2 AUTHENTICATE PLAIN\r\n")
        self.assertTrue(c.line().startswith(b"+"))
        c.send(b"*\r\n")  # the client gives up
        self.assertTrue(c.line().startswith(b"a2 BAD"))
        untagged, done = c.cmd("AUTHENTICATE PLAIN !!notbase64")
        self.assertTrue(done.startswith(b"BAD"), done)
        untagged, done = c.cmd("AUTHENTICATE CRAM-MD5")
        self.assertTrue(done.startswith(b"NO"), done)
        c.login()
        # LOGIN with literals (clients use them for passwords with quotes):
        # one non-synchronizing, one waiting for "+".
        c = self.conn()
        c.send(b"a3 LOGIN {%d+}\r\n%s {%d}\r\n" % (len(USER), USER.encode(), len(PASS)))
        self.assertTrue(c.line().startswith(b"+"))
        c.send(PASS.encode() + b"\r\n")
        self.assertTrue(c.line().startswith(b"a3 OK"))

    def test_05_failed_logins_are_delayed_and_doubling(self):
        c = self.conn()
        for i in range(6):
            untagged, done = c.cmd('LOGIN "%s" "wrong-%d"' % (USER, i))
            self.assertEqual(done, b"NO [AUTHENTICATIONFAILED] Authentication failed")
        untagged, done = c.cmd('LOGIN "nobody@example.org" "x"')
        self.assertTrue(done.startswith(b"NO [AUTHENTICATIONFAILED]"), done)
        c.login()  # a success resets the count for this address
        c2 = self.conn()
        untagged, done = c2.cmd('LOGIN "%s" "wrong-again"' % USER)
        self.assertTrue(done.startswith(b"NO [AUTHENTICATIONFAILED]"))
        c2.login()
        # The server logs the delay it applied to each failure: 10 ms,
        # doubling up to 16 times, and back to 10 after the success.
        with open(os.path.join(self.node.dir, "havend.log")) as f:
            delays = [int(d) for d in re.findall(r"login failed .*delay_ms=(\d+)", f.read())]
        self.assertEqual(delays[-8:], [10, 20, 40, 80, 160, 160, 160, 10])

    def test_06_inactive_accounts_unavailable(self):
        for state, why in (("held", "is on hold"), ("moving", "is being moved"),
                           ("restoring", "is being restored")):
            c = self.conn()
            untagged, done = c.cmd('LOGIN "%s@example.org" "pw-%s"' % (state, state))
            self.assertTrue(done.startswith(b"NO [UNAVAILABLE]"), done)
            self.assertIn(why.encode(), done)
            # The state is told only to whom knows the password.
            untagged, done = c.cmd('LOGIN "%s@example.org" "wrong"' % state)
            self.assertTrue(done.startswith(b"NO [AUTHENTICATIONFAILED]"), done)
            c.ok("NOOP")  # the session goes on, not logged in
            untagged, done = c.cmd("SELECT INBOX")
            self.assertTrue(done.startswith(b"BAD"), done)
        import base64
        c = self.conn()
        untagged, done = c.cmd(b"AUTHENTICATE PLAIN " +
                               base64.b64encode(b"\0held@example.org\0pw-held"))
        self.assertTrue(done.startswith(b"NO [UNAVAILABLE]"), done)
        # Made active while havend runs: the next login works.
        self.node.haven("user", "state", "held@example.org", "active")
        c.login("held@example.org", "pw-held")
        c.ok("SELECT INBOX")

    # ---- IDLE and sessions that see each other ----

    def test_10_idle(self):
        self.make_box("IdleBox", 2)
        a, b = self.session(), self.session()
        a.ok("SELECT IdleBox")
        b.ok("SELECT IdleBox")
        a.send(b"i1 IDLE\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        b.append("IdleBox", message(3))
        self.assertEqual(a.line(), b"* 3 EXISTS")
        b.ok("STORE 2 +FLAGS (\\Flagged)")
        self.assertRegex(a.line(), rb"^\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\)\)$")
        b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertRegex(a.line(), rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Deleted\)\)$")
        b.ok("EXPUNGE")
        self.assertEqual(a.line(), b"* 1 EXPUNGE")
        self.assertEqual(a.line(), b"* 2 EXISTS")
        a.send(b"DONE\r\n")
        self.assertTrue(a.line().startswith(b"i1 OK"))
        lines, _ = a.ok("FETCH 1:* (UID FLAGS)")
        self.assertEqual(lines, [b"* 1 FETCH (UID 2 FLAGS (\\Flagged))",
                                 b"* 2 FETCH (UID 3 FLAGS ())"])
        # Anything but DONE ends IDLE with BAD; the session goes on.
        a.send(b"i2 IDLE\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        a.send(b"NOT-DONE\r\n")
        self.assertTrue(a.line().startswith(b"i2 BAD"))
        a.ok("NOOP")
        # IDLE and DONE pipelined in one packet, and a lower-case done.
        a.send(b"i4 IDLE\r\nDONE\r\ni5 NOOP\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        self.assertTrue(a.line().startswith(b"i4 OK"))
        self.assertTrue(a.line().startswith(b"i5 OK"))
        a.send(b"i6 IDLE\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        a.send(b"done\r\n")
        self.assertTrue(a.line().startswith(b"i6 OK"))
        # IDLE also works when no mailbox is selected.
        a.ok("UNSELECT")
        a.send(b"i3 IDLE\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        a.send(b"DONE\r\n")
        self.assertTrue(a.line().startswith(b"i3 OK"))

    def test_11_idle_hears_another_process(self):
        self.make_box("ImportBox", 1)
        a = self.session()
        a.ok("SELECT ImportBox")
        a.send(b"i1 IDLE\r\n")
        self.assertTrue(a.line().startswith(b"+"))
        mbox = os.path.join(self.node.dir, "import.mbox")
        with open(mbox, "wb") as f:
            for i in (2, 3):
                f.write(b"From x@example.org Wed Jan  3 10:00:00 2024\n" +
                        message(i).replace(b"\r\n", b"\n") + b"\n")
        # `haven import` writes the store directly, from another process.
        self.node.haven("import", USER, "ImportBox", mbox)
        # One EXISTS, or one per message should the idler wake in between.
        n = 1
        while n < 3:
            m = re.match(rb"^\* (\d+) EXISTS$", a.line())
            self.assertTrue(m and n < int(m.group(1)) <= 3, m)
            n = int(m.group(1))
        a.send(b"DONE\r\n")
        self.assertTrue(a.line().startswith(b"i1 OK"))
        lits = a.ok_lits("UID FETCH 3 BODY.PEEK[]")
        self.assertEqual(lits[0][1][0], message(3))

    def test_12_many_sessions_see_each_other(self):
        self.make_box("Shared", 10)
        ss = [self.session() for _ in range(6)]
        for s in ss:
            lines, _ = s.ok("SELECT Shared")
            self.assertIn(b"* 10 EXISTS", lines)
        w, idler, fetcher, rest = ss[0], ss[1], ss[2], ss[3:]
        idler.send(b"i1 IDLE\r\n")
        self.assertTrue(idler.line().startswith(b"+"))

        lines, _ = w.ok("STORE 3 +FLAGS (\\Flagged)")
        self.assertEqual(lines, [b"* 3 FETCH (FLAGS (\\Flagged))"])
        self.assertEqual(idler.line(), b"* 3 FETCH (UID 3 FLAGS (\\Flagged))")
        for s in rest + [fetcher]:
            lines, _ = s.ok("NOOP")
            self.assertEqual(lines, [b"* 3 FETCH (UID 3 FLAGS (\\Flagged))"])

        w.ok("STORE 2,5,9 +FLAGS.SILENT (\\Deleted)")
        got = [idler.line() for _ in range(3)]  # read before the EXPUNGE: no race
        self.assertEqual(sorted(got), sorted(b"* %d FETCH (UID %d FLAGS (\\Deleted))" % (u, u)
                                             for u in (2, 5, 9)))
        lines, _ = w.ok("EXPUNGE")
        want = [b"* 2 EXPUNGE", b"* 4 EXPUNGE", b"* 7 EXPUNGE", b"* 7 EXISTS"]
        self.assertEqual(lines, want)
        self.assertEqual([idler.line() for _ in range(4)], want)
        # A FETCH by sequence number must not be told of expunges (RFC 3501
        # 7.4.1): the numbers the client holds would shift under it.
        lines, _ = fetcher.ok("FETCH 1:* (UID)")
        self.assertEqual(untagged_kind(lines, "EXPUNGE"), [])
        lines, _ = fetcher.ok("SEARCH ALL")
        self.assertEqual(untagged_kind(lines, "EXPUNGE"), [])
        lines, _ = fetcher.ok("NOOP")
        self.assertEqual(untagged_kind(lines, "EXPUNGE"), want[:3])
        for s in rest:
            lines, _ = s.ok("UID FETCH 1:* (FLAGS)")  # UID commands may be told
            self.assertEqual(untagged_kind(lines, "EXPUNGE"), want[:3])

        w.append("Shared", message(11))
        self.assertEqual(idler.line(), b"* 8 EXISTS")
        for s in rest + [fetcher]:
            lines, _ = s.ok("NOOP")
            self.assertEqual(lines, [b"* 8 EXISTS"])
        uids = [1, 3, 4, 6, 7, 8, 10, 11]
        for s in [w, fetcher] + rest:
            lines, _ = s.ok("FETCH 1:* (UID)")
            self.assertEqual(lines, [b"* %d FETCH (UID %d)" % (i + 1, u)
                                     for i, u in enumerate(uids)])
        idler.send(b"DONE\r\n")
        self.assertTrue(idler.line().startswith(b"i1 OK"))
        # A session that EXAMINEs sees the changes too but may not make any.
        ro = self.session()
        lines, done = ro.ok("EXAMINE Shared")
        self.assertIn(b"[READ-ONLY]", done)
        for cmd in ("STORE 1 +FLAGS (\\Seen)", "EXPUNGE", "MOVE 1 INBOX"):
            untagged, done = ro.cmd(cmd)
            self.assertTrue(done.startswith(b"NO [READ-ONLY]"), (cmd, done))
        ro.ok("FETCH 1 BODY[]")  # no \Seen in a read-only view
        lines, _ = ro.ok("FETCH 1 FLAGS")
        self.assertEqual(lines, [b"* 1 FETCH (FLAGS ())"])

    def test_13_mailbox_renamed_and_deleted_under_a_session(self):
        self.make_box("Doomed", 3)
        a, b = self.session(), self.session()
        a.ok("SELECT Doomed")
        b.ok("RENAME Doomed Renamed")  # the same mailbox under another name
        lines, _ = a.ok("NOOP")
        self.assertEqual(lines, [])
        lines, _ = a.ok("FETCH 1:* (UID)")
        self.assertEqual(lines, [b"* %d FETCH (UID %d)" % (i, i) for i in (1, 2, 3)])
        b.ok("DELETE Renamed")
        lines, _ = a.ok("NOOP")  # every message is gone for a
        self.assertEqual(lines, [b"* 3 EXPUNGE", b"* 2 EXPUNGE", b"* 1 EXPUNGE"])
        lines, _ = a.ok("FETCH 1:* (UID)")
        self.assertEqual(lines, [])
        b.ok("CREATE Renamed")  # a new mailbox of that name starts afresh
        lines, _ = b.ok("STATUS Renamed (MESSAGES UIDNEXT)")
        self.assertEqual(lines, [b"* STATUS Renamed (MESSAGES 0 UIDNEXT 1)"])
        # RENAME INBOX moves its messages to the new name, INBOX stays.
        c = self.session()
        c.append("INBOX", message(1))
        c.append("INBOX", message(2))
        c.ok("RENAME INBOX OldInbox")
        lines, _ = c.ok("STATUS INBOX (MESSAGES)")
        self.assertEqual(lines, [b"* STATUS INBOX (MESSAGES 0)"])
        c.ok("SELECT OldInbox")
        got = c.ok_lits("FETCH 1:* BODY.PEEK[]")
        self.assertEqual([g[1][0] for g in got], [message(1), message(2)])

    # ---- CONDSTORE / QRESYNC ----

    def test_20_condstore(self):
        self.make_box("Cond", 5)
        c = self.session()
        lines, _ = c.ok("ENABLE CONDSTORE")
        self.assertEqual(lines, [b"* ENABLED CONDSTORE"])
        lines, _ = c.ok("SELECT Cond (CONDSTORE)")
        hms = [int(m) for ln in lines for m in re.findall(rb"\[HIGHESTMODSEQ (\d+)\]", ln)]
        self.assertEqual(len(hms), 1)
        h0 = hms[0]
        lines, _ = c.ok("FETCH 1:* (UID MODSEQ)")
        mods = {int(m.group(1)): int(m.group(2)) for m in
                (re.search(rb"UID (\d+) MODSEQ \((\d+)\)", ln) for ln in lines)}
        self.assertEqual(sorted(mods), [1, 2, 3, 4, 5])
        self.assertEqual(max(mods.values()), h0)
        # Conditional STORE: passes while unchanged, then reports MODIFIED.
        lines, done = c.ok("UID STORE 2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % mods[2])
        m = re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ \((\d+)\)\)$", lines[0])
        self.assertTrue(m, lines)
        m2 = int(m.group(1))
        self.assertGreater(m2, h0)
        # 2 changed after h0, 3 did not: only 3 is stored.
        lines, done = c.ok("UID STORE 2,3 (UNCHANGEDSINCE %d) +FLAGS (\\Answered)" % h0)
        self.assertIn(b"[MODIFIED 2]", done)
        lines, _ = c.ok("FETCH 2:3 (FLAGS)")
        self.assertEqual(lines, [b"* 2 FETCH (FLAGS (\\Seen))",
                                 b"* 3 FETCH (FLAGS (\\Answered))"])
        # What changed since h0: messages 2 and 3, nothing else.
        lines, _ = c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h0)
        self.assertEqual(sorted(re.search(rb"UID (\d+)", ln).group(1) for ln in lines),
                         [b"2", b"3"])
        self.assertTrue(all(b"MODSEQ (" in ln for ln in lines))
        lines, _ = c.ok("SEARCH MODSEQ %d" % (h0 + 1))
        m = re.match(rb"\* SEARCH 2 3 \(MODSEQ (\d+)\)$", lines[0])
        self.assertTrue(m, lines)
        lines, _ = c.ok("STATUS Cond (HIGHESTMODSEQ)")
        self.assertEqual(lines, [b"* STATUS Cond (HIGHESTMODSEQ %s)" % m.group(1)])
        lines, _ = c.ok("SEARCH RETURN (COUNT) MODSEQ %d" % (h0 + 1))
        self.assertEqual(lines[0], b'* ESEARCH (TAG "t%d") COUNT 2 MODSEQ %s'
                         % (c.ntag, m.group(1)))

    def test_21_qresync(self):
        self.make_box("QR", 6)
        c = self.session()
        c.ok("ENABLE QRESYNC")
        lines, _ = c.ok("SELECT QR")
        validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1))
        h0 = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))
        # Another session changes the mailbox while we are away.
        c.ok("UNSELECT")
        o = self.session()
        o.ok("SELECT QR")
        o.ok("STORE 1,6 +FLAGS.SILENT (\\Deleted)")
        o.ok("EXPUNGE")
        o.ok("UID STORE 3 +FLAGS.SILENT (\\Flagged)")
        # Resynchronise in one round trip.
        lines, _ = c.ok("SELECT QR (QRESYNC (%d %d))" % (validity, h0))
        self.assertIn(b"* VANISHED (EARLIER) 1,6", lines)
        fetches = untagged_kind(lines, "FETCH")
        self.assertEqual(len(fetches), 1, lines)
        self.assertRegex(fetches[0], rb"^\* 2 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)$")
        # Known uids limit what VANISHED may name.
        lines, _ = c.ok("SELECT QR (QRESYNC (%d %d 2:6))" % (validity, h0))
        self.assertIn(b"* OK [CLOSED] Previous mailbox closed", lines)
        self.assertIn(b"* VANISHED (EARLIER) 6", lines)
        # Another uidvalidity: no VANISHED, the client must start over.
        lines, _ = c.ok("SELECT QR (QRESYNC (%d %d))" % (validity + 1, h0))
        self.assertEqual(untagged_kind(lines, "VANISHED"), [])
        lines, _ = c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0)
        self.assertEqual(lines[0], b"* VANISHED (EARLIER) 1")  # 6 was the highest: past *
        # With QRESYNC on, expunges are told as VANISHED.
        o.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        o.ok("EXPUNGE")
        lines, _ = c.ok("NOOP")
        self.assertIn(b"* VANISHED 2", lines)
        self.assertEqual(untagged_kind(lines, "EXPUNGE"), [])
        # QRESYNC parameters without ENABLE QRESYNC: BAD.
        untagged, done = o.cmd("SELECT QR (QRESYNC (%d %d))" % (validity, h0))
        self.assertTrue(done.startswith(b"BAD"), done)

    # ---- UIDPLUS, MOVE, ESEARCH ----

    def test_30_uidplus(self):
        c = self.session()
        c.ok("CREATE Up")
        lines, _ = c.ok("STATUS Up (UIDNEXT UIDVALIDITY)")
        m = re.search(rb"UIDNEXT (\d+) UIDVALIDITY (\d+)", lines[0])
        nxt, validity = int(m.group(1)), int(m.group(2))
        done = c.append("Up", message(1), "(\\Seen)")
        self.assertIn(b"[APPENDUID %d %d]" % (validity, nxt), done)
        for i in range(2, 6):
            c.append("Up", message(i))
        c.ok("CREATE UpDst")
        c.ok("CREATE UpDst2")
        lines, _ = c.ok("STATUS UpDst (UIDVALIDITY)")
        dval = int(re.search(rb"UIDVALIDITY (\d+)", lines[0]).group(1))
        c.ok("SELECT Up")
        lines, done = c.ok("UID COPY 2:3,5 UpDst")
        self.assertIn(b"[COPYUID %d 2:3,5 1:3]" % dval, done)
        c.ok("UID STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        lines, _ = c.ok("UID EXPUNGE 2")  # only uid 2, though 1 and 3 are \Deleted
        self.assertEqual(untagged_kind(lines, "EXPUNGE"), [b"* 2 EXPUNGE"])
        lines, _ = c.ok("UID SEARCH DELETED")
        self.assertEqual(lines, [b"* SEARCH 1 3"])
        lines, done = c.ok("COPY 1:* UpDst2")  # flags go with the copies
        lines, _ = c.ok("STATUS UpDst2 (MESSAGES DELETED UNSEEN)")
        self.assertEqual(lines, [b"* STATUS UpDst2 (MESSAGES 4 DELETED 2 UNSEEN 3)"])
        untagged, done = c.cmd("COPY 1 NoSuchBox")
        self.assertTrue(done.startswith(b"NO [TRYCREATE]"), done)
        untagged, done = c.cmd("APPEND NoSuchBox {3+}\r\nabc")
        self.assertTrue(done.startswith(b"NO [TRYCREATE]"), done)

    def test_31_move(self):
        c = self.session()
        c.ok("CREATE MvSrc")
        c.ok("CREATE MvDst")
        for i in range(1, 7):
            c.append("MvSrc", message(i), "(\\Flagged $Moved)" if i % 2 else "")
        lines, _ = c.ok("STATUS MvDst (UIDVALIDITY)")
        dval = int(re.search(rb"UIDVALIDITY (\d+)", lines[0]).group(1))
        w = self.session()
        w.ok("SELECT MvSrc")
        c.ok("SELECT MvSrc")
        lines, done = c.ok("MOVE 2,4:5 MvDst")
        self.assertEqual(lines, [b"* OK [COPYUID %d 2,4:5 1:3] Moved" % dval,
                                 b"* 2 EXPUNGE", b"* 3 EXPUNGE", b"* 3 EXPUNGE", b"* 3 EXISTS"])
        lines, done = c.ok("UID MOVE 6 MvDst")
        self.assertEqual(lines[:2], [b"* OK [COPYUID %d 6 4] Moved" % dval, b"* 3 EXPUNGE"])
        lines, _ = w.ok("NOOP")  # the watcher hears the moves as expunges
        self.assertEqual(untagged_kind(lines, "EXPUNGE"),
                         [b"* 2 EXPUNGE", b"* 3 EXPUNGE", b"* 3 EXPUNGE", b"* 3 EXPUNGE"])
        c.ok("SELECT MvDst")
        got = c.ok_lits("UID FETCH 1:* (FLAGS BODY.PEEK[])")
        self.assertEqual([g[1][0] for g in got], [message(i) for i in (2, 4, 5, 6)])
        flags = [re.search(rb"FLAGS \(([^)]*)\)", g[0]).group(1) for g in got]
        self.assertEqual(flags, [b"", b"", b"\\Flagged $Moved", b""])
        untagged, done = c.cmd("MOVE 1 NoSuchBox")
        self.assertTrue(done.startswith(b"NO [TRYCREATE]"), done)
        lines, _ = c.ok("STATUS MvSrc (MESSAGES)")
        self.assertEqual(lines, [b"* STATUS MvSrc (MESSAGES 2)"])

    def test_32_esearch(self):
        c = self.session()
        c.ok("CREATE Es")
        for i in range(1, 9):
            c.append("Es", message(i), "(\\Flagged)" if i in (2, 3, 7) else "")
        c.ok("SELECT Es")
        t = c.tag()
        untagged, done = c.cmd("SEARCH RETURN (MIN MAX COUNT) FLAGGED", tag=t)
        self.assertEqual(untagged[0][0], b'* ESEARCH (TAG "%s") MIN 2 MAX 7 COUNT 3' % t.encode())
        t = c.tag()
        untagged, done = c.cmd("UID SEARCH RETURN (ALL) NOT FLAGGED", tag=t)
        self.assertEqual(untagged[0][0], b'* ESEARCH (TAG "%s") UID ALL 1,4:6,8' % t.encode())
        t = c.tag()
        untagged, done = c.cmd("SEARCH RETURN () SUBJECT \"number 5\"", tag=t)
        self.assertEqual(untagged[0][0], b'* ESEARCH (TAG "%s") ALL 5' % t.encode())
        t = c.tag()
        untagged, done = c.cmd("SEARCH RETURN (MIN COUNT) KEYWORD nothing", tag=t)
        self.assertEqual(untagged[0][0], b'* ESEARCH (TAG "%s") COUNT 0' % t.encode())
        untagged, done = c.cmd("SEARCH RETURN (FOO) ALL")
        self.assertTrue(done.startswith(b"BAD"), done)
        lines, _ = c.ok("SEARCH CHARSET UTF-8 OR FROM s2@ TEXT \"message 8\"")
        self.assertEqual(lines, [b"* SEARCH 2 8"])
        untagged, done = c.cmd("SEARCH CHARSET KOI8-R ALL")
        self.assertTrue(done.startswith(b"NO [BADCHARSET"), done)

    # ---- LIST-EXTENDED, LIST-STATUS, SPECIAL-USE ----

    def test_40_list_extended_status_special_use(self):
        c = self.session()
        c.ok("CREATE Tree/A")
        c.ok("CREATE Tree/B/C")
        c.ok("SUBSCRIBE Tree/A")
        c.append("Tree/A", message(1))
        c.append("Tree/A", message(2), "(\\Seen)")
        lines, _ = c.ok('LIST "" "Tree/%"')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "/" Tree/A',
                                 b'* LIST (\\Noselect \\HasChildren) "/" Tree/B'])
        lines, _ = c.ok('LIST "" "Tree/*"')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Tree/B/C', lines)
        lines, _ = c.ok('LIST "Tree/" "%"')  # reference + pattern
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Tree/A', lines)
        lines, _ = c.ok('LIST "" ""')
        self.assertEqual(lines, [b'* LIST (\\Noselect) "/" ""'])
        lines, _ = c.ok('LIST "" ("INBOX" "Tra*")')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "/" INBOX',
                                 b'* LIST (\\HasNoChildren \\Trash) "/" Trash'])
        lines, _ = c.ok('LIST "" inbox')  # INBOX is case-insensitive
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "/" INBOX'])
        # SUBSCRIBED selection: exactly the subscribed ones, marked.
        lines, _ = c.ok('LIST (SUBSCRIBED) "" "*"')
        names = [ln.rsplit(b" ", 1)[1] for ln in lines]
        self.assertEqual(sorted(names), [b"Archive", b"Drafts", b"INBOX", b"Junk", b"Sent",
                                         b"Trash", b"Tree/A"])
        self.assertTrue(all(b"\\Subscribed" in ln for ln in lines), lines)
        lines, _ = c.ok('LIST "" "Tree/*" RETURN (SUBSCRIBED CHILDREN)')
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Tree/A', lines)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Tree/B/C', lines)
        # LIST-STATUS: a STATUS right after each selectable mailbox.
        lines, _ = c.ok('LIST "" "Tree/*" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
        i = lines.index(b'* LIST (\\HasNoChildren) "/" Tree/A')
        self.assertEqual(lines[i + 1], b"* STATUS Tree/A (MESSAGES 2 UNSEEN 1 UIDNEXT 3)")
        i = lines.index(b'* LIST (\\HasNoChildren) "/" Tree/B/C')
        self.assertEqual(lines[i + 1], b"* STATUS Tree/B/C (MESSAGES 0 UNSEEN 0 UIDNEXT 1)")
        # SPECIAL-USE: the five default roles, and only them when selected.
        lines, _ = c.ok('LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
                                 b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
                                 b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
                                 b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
                                 b'* LIST (\\HasNoChildren \\Trash) "/" Trash'])
        lines, _ = c.ok('LSUB "" "Tree/*"')
        self.assertEqual(lines, [b'* LSUB () "/" Tree/A'])
        for bad in ('LIST (FOO) "" "*"', 'LIST "" "*" RETURN (FOO)', 'LIST "" "*" RETURN',
                    "LIST", 'STATUS INBOX (FOO)', "STATUS INBOX"):
            untagged, done = c.cmd(bad)
            self.assertTrue(done.startswith(b"BAD"), (bad, done))
        untagged, done = c.cmd("STATUS NoSuchBox (MESSAGES)")
        self.assertTrue(done.startswith(b"NO [NONEXISTENT]"), done)
        # RENAME carries the children along.
        c.ok("CREATE Tree/A/Kid")
        c.ok("RENAME Tree/A Bush")
        lines, _ = c.ok('LIST "" "Bush*"')
        self.assertEqual(lines, [b'* LIST (\\HasChildren) "/" Bush',
                                 b'* LIST (\\HasNoChildren) "/" Bush/Kid'])
        lines, _ = c.ok("STATUS Bush (MESSAGES)")
        self.assertEqual(lines, [b"* STATUS Bush (MESSAGES 2)"])
        untagged, done = c.cmd("RENAME Bush INBOX")
        self.assertTrue(done.startswith(b"NO [ALREADYEXISTS]"), done)

    # ---- literals and limits ----

    def test_50_literals_over_limits(self):
        c = self.conn()
        # Before login the limits are small: no "+", an error, and on.
        c.send(b"l1 LOGIN {100000}\r\n")
        ln = c.line()
        self.assertRegex(ln, rb"^l1 (BAD|NO) \[TOOBIG\]")
        c.ok("NOOP")
        c.send(b"l2 LOGIN " + b"x" * 9000 + b" y\r\n")  # a line over the 8 KiB pre-login limit
        self.assertRegex(c.line(), rb"^l2 BAD \[TOOBIG\]")
        c.ok("NOOP")
        c.login()
        c.ok("CREATE Lit")
        # A message of exactly APPENDLIMIT bytes is taken; one more is not.
        body = message(1, b"z" * (MAX_MESSAGE - len(message(1)) - 2) + b"\r\n")
        self.assertEqual(len(body), MAX_MESSAGE)
        done = c.append("Lit", body)
        self.assertIn(b"APPENDUID", done)
        c.send(b"l3 APPEND Lit {%d}\r\n" % (MAX_MESSAGE + 1))
        self.assertRegex(c.line(), rb"^l3 (BAD|NO) \[TOOBIG\]")  # and no "+": nothing sent
        c.ok("NOOP")
        # A non-synchronizing literal over the limit: the data comes anyway.
        # It must be skipped, never read as commands (it holds a LOGOUT).
        junk = (b"j1 LOGOUT\r\n" * (MAX_MESSAGE // 11 + 1))[:MAX_MESSAGE + 100]
        c.send(b"l4 APPEND Lit {%d+}\r\n" % len(junk) + junk + b"\r\n")
        self.assertRegex(c.line(), rb"^l4 BAD \[TOOBIG\]")
        lines, _ = c.ok("NOOP")
        self.assertEqual(lines, [])
        # Literal data that looks like commands, in a refused APPEND.
        inner = b"k1 LOGOUT\r\n"
        c.send(b"l5 APPEND NoSuchBox {%d+}\r\n" % len(inner) + inner + b"\r\n")
        self.assertRegex(c.line(), rb"^l5 NO \[TRYCREATE\]")
        c.ok("NOOP")
        # A line over the 64 KiB limit after login.
        c.send(b"l6 NOOP " + b"a" * 70000 + b"\r\n")
        self.assertRegex(c.line(), rb"^l6 BAD \[TOOBIG\]")
        c.ok("NOOP")
        # Literals in other places: a mailbox name, a search string, and
        # literal8 in APPEND (binary content).
        c.send(b"l7 SELECT {3}\r\n")
        self.assertTrue(c.line().startswith(b"+"))
        c.send(b"Lit\r\n")
        untagged, done = c.until("l7")
        self.assertTrue(done.startswith(b"OK"), done)
        lines, _ = c.ok(b"SEARCH BODY {7+}\r\nzzzzzzz")
        self.assertEqual(lines, [b"* SEARCH 1"])
        lines, _ = c.ok(b"UID FETCH 1 (RFC822.SIZE)")
        self.assertIn(b"RFC822.SIZE %d" % MAX_MESSAGE, lines[0])
        c.ok("LOGOUT")
        # A {n+} too large to even count: the data that follows cannot be
        # skipped, so the server says so and hangs up.
        c = self.conn()
        c.send(b"l8 LOGIN {99999999999999999999999+}\r\n")
        self.assertRegex(c.line(), rb"^l8 BAD \[TOOBIG\]")
        self.assertEqual(c.line(), b"* BYE literal too large to skip, closing")
        with self.assertRaises((EOFError, ConnectionError)):
            c.line()

    def test_51_appended_bytes_come_back_exactly(self):
        c = self.session()
        c.ok("CREATE Bytes")
        odd = [message(1),
               b"Subject: 8bit \xc3\xa9\xff\r\n\r\nbytes \x80\x81 and a NUL-free body\r\n",
               b"Subject: no final newline\r\n\r\nlast line",
               b"Subject: lone LF\n\nbody\nwith LF only\n",
               b"Subject: cr\r\n\r\nmid\rline\r\n"]
        for m in odd:
            c.append("Bytes", m)
        c.ok("SELECT Bytes")
        got = c.ok_lits("FETCH 1:* (BODY.PEEK[] RFC822.SIZE)")
        self.assertEqual([g[1][0] for g in got], odd)
        for g, m in zip(got, odd):
            self.assertIn(b"RFC822.SIZE %d" % len(m), g[0])
        got = c.ok_lits("FETCH 2 (BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(got[0][1], [b"bytes \x80\x81 and a NUL-free body\r\n",
                                     b"Subject: 8bit \xc3\xa9\xff\r\n\r\n"])
        got = c.ok_lits("FETCH 1 (BODY.PEEK[]<5.10>)")
        self.assertIn(b"BODY[]<5>", got[0][0])
        self.assertEqual(got[0][1], [message(1)[5:15]])

    # ---- malformed commands ----

    def test_60_malformed_commands_get_bad_and_session_goes_on(self):
        c = self.conn()
        before_login = [b"x1 FROBNICATE", b"x2 LOGIN", b"x3 LOGIN a b c", b"x4 SELECT INBOX",
                        b"x5 FETCH 1 FLAGS", b"x6 LOGIN (a) b", b'x7 LOGIN "unterminated',
                        b"x8 CAPABILITY)", b"x9 AUTHENTICATE", b"(", b"", b"   ",
                        b"\x00\x01\x02", b"x10 \xff\xfe", b"x11 NOOP (((", b"x12 UID",
                        b"x13 UID FETCH 1 FLAGS", b"x14 LOGIN {-1}", b"x15 LOGIN {abc}"]
        self.assert_all_bad(c, before_login)
        c.login()
        self.make_box("Junkyard", 3)
        c.ok("SELECT Junkyard")
        after_login = [
            b"y1 FETCH", b"y2 FETCH 1", b"y3 FETCH 0 FLAGS", b"y4 FETCH 1: FLAGS",
            b"y5 FETCH 4 FLAGS", b"y6 FETCH a:b FLAGS", b"y7 FETCH 1 (FLAGS", b"y8 FETCH 1 FOO",
            b"y9 FETCH 1 BODY[HEADER.FIELDS (SUBJECT]", b"y9a FETCH 1 BODY[HEADER.FIELDS]",
            b"y9b FETCH 1 BODY[FOO]", b"y9c FETCH 1 BODY.PEEK[0]", b"y9d FETCH 1 BINARY[1.MIME]",
            b"y9e FETCH 1 BODY[1.]", b"y10 FETCH 1 BODY[]<1.0>",
            b"y11 FETCH 1 BODY[]<x>", b"y12 FETCH 1,,2 FLAGS", b"y13 UID FETCH 1:x FLAGS",
            b"y14 STORE 1 FLAGS.FOO (\\Seen)", b"y15 STORE 1 +FLAGS (\\Bogus)",
            b"y16 STORE 1 +FLAGS", b"y17 STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)",
            b"y18 SEARCH", b"y19 SEARCH FOO", b"y20 SEARCH OR SEEN",
            b"y21 SEARCH SINCE 32-Foo-2024", b"y22 SEARCH LARGER x", b"y23 SEARCH ((((",
            b"y24 SEARCH NOT", b"y25 SEARCH HEADER Subject", b"y26 UID FROB 1",
            b"y27 COPY 1", b"y28 COPY", b"y29 MOVE 1:x Junkyard", b"y30 SELECT",
            b'y31 SELECT INBOX (FOO)', b"y32 CREATE", b"y33 RENAME a", b"y34 STATUS INBOX MESSAGES",
            b"y35 APPEND Junkyard", b"y36 APPEND Junkyard (\\Seen) \"bad date\" {1+}\r\nx",
            b"y37 APPEND Junkyard (\\Bogus) {1+}\r\nx", b"y38 UID EXPUNGE", b"y39 UID EXPUNGE x",
            b"y40 ENABLE", b"y41 LOGIN a b", b"y42 AUTHENTICATE PLAIN", b"y43 STARTTLS",
            b"y44 FETCH 1 (BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21]<0.0>)",
            b'y45 SEARCH "quoted"', b"y46 FETCH 1 (" + b"(" * 40 + b")" * 40 + b")",
            b"y47 SEARCH " + b"(" * 40 + b"ALL" + b")" * 40,
            b"y48 SEARCH " + b"NOT " * 100 + b"ALL"]
        self.assert_all_bad(c, after_login)
        # The mailbox is untouched by all of that.
        lines, _ = c.ok("FETCH 1:* (UID FLAGS)")
        self.assertEqual(lines, [b"* %d FETCH (UID %d FLAGS ())" % (i, i) for i in (1, 2, 3)])

    def assert_all_bad(self, c, commands):
        """Each command gets BAD (or NO) tagged with its tag when it has
        one, untagged BAD otherwise; a NOOP after each still works."""
        for line in commands:
            c.send(line + b"\r\n")
            while True:
                ln = c.response()[0]
                if ln.startswith(b"+"):  # a literal we meant to be refused
                    continue
                if ln.startswith(b"* ") and not ln.startswith(b"* BAD"):
                    continue  # untagged data of a command that ran
                break
            tag = line.split(b" ", 1)[0]
            bad = re.match(rb"^(\S+) (BAD|NO)\b", ln)
            self.assertTrue(bad, (line[:80], ln))
            if re.match(rb"^[A-Za-z0-9.]+$", tag) and len(line.split(b" ")) > 1:
                self.assertIn(bad.group(1), (tag, b"*"), (line[:80], ln))
            untagged, done = c.cmd("NOOP")
            self.assertTrue(done.startswith(b"OK"), (line[:80], done))

    def test_61_too_many_bad_commands_hang_up(self):
        c = self.conn()
        for i in range(20):
            c.send(b"z%d FROBNICATE\r\n" % i)
            self.assertTrue(c.line().startswith(b"z%d BAD" % i))
        c.send(b"z20 FROBNICATE\r\n")
        self.assertTrue(c.line().startswith(b"z20 BAD"))
        self.assertTrue(c.line().startswith(b"* BYE"))
        with self.assertRaises((EOFError, ConnectionError)):
            c.line()

    def test_62_logout_and_pipelining(self):
        c = self.conn()
        c.send(b"p1 LOGIN proto@example.org pr0to-pw\r\np2 SELECT INBOX\r\np3 NOOP\r\n"
               b"p4 LOGOUT\r\np5 NOOP\r\n")
        tags = []
        while True:
            try:
                ln = c.line()
            except (EOFError, ConnectionError):
                break
            if not ln.startswith(b"* "):
                tags.append(ln.split(b" ")[:2])
        self.assertEqual(tags, [[b"p1", b"OK"], [b"p2", b"OK"], [b"p3", b"OK"], [b"p4", b"OK"]])


class NoPlaintext(unittest.TestCase):
    """An instance that refuses passwords in clear text, even from
    loopback, and holds failed logins back for long enough to watch."""

    @classmethod
    def setUpClass(cls):
        cls.node = Instance()
        cls.node.set_conf("plaintext_loopback", "no")
        # Long enough that another session's TLS login, SELECT and NOOP are
        # done well before it; the test waits it out once.
        cls.node.set_conf("imap_auth_fail_delay_ms", "12000")
        cls.node.add_user(USER, PASS)
        cls.node.start()
        cls.node.wait_port(cls.node.ports["imaps"])

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def conn(self, tls=False):
        c = Conn(self.node.ports["imaps" if tls else "imap"], tls=tls)
        self.addCleanup(c.close)
        return c

    def test_login_needs_tls(self):
        import base64
        c = self.conn()
        caps = c.ok("CAPABILITY")[0][0].split()
        self.assertIn(b"LOGINDISABLED", caps)
        self.assertIn(b"STARTTLS", caps)
        self.assertNotIn(b"AUTH=PLAIN", caps)
        untagged, done = c.cmd('LOGIN "%s" "%s"' % (USER, PASS))
        self.assertTrue(done.startswith(b"NO [PRIVACYREQUIRED]"), done)
        untagged, done = c.cmd(b"AUTHENTICATE PLAIN " +
                               base64.b64encode(b"\0" + USER.encode() + b"\0" + PASS.encode()))
        self.assertTrue(done.startswith(b"NO [PRIVACYREQUIRED]"), done)
        untagged, done = c.cmd("SELECT INBOX")
        self.assertTrue(done.startswith(b"BAD"), done)  # still not logged in
        untagged, done = c.cmd("STARTTLS")
        self.assertTrue(done.startswith(b"OK"), done)
        c.sock = tls_context().wrap_socket(c.sock)
        caps = c.ok("CAPABILITY")[0][0].split()
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        c.login()
        c.ok("SELECT INBOX")
        t = self.conn(tls=True)
        t.login()
        t.ok("LOGOUT")

    def test_failed_login_answer_is_held_back(self):
        # A failed login over TLS is answered only after the delay; another
        # session meanwhile logs in and works: the delay holds no worker.
        a = self.conn(tls=True)
        a.send(b"f1 LOGIN %s wrong-password\r\n" % USER.encode())
        b = self.conn(tls=True)
        b.login()
        b.ok("SELECT INBOX")
        b.ok("NOOP")
        self.assertFalse(a.pending(), "the failed login was answered without delay")
        self.assertEqual(a.line(), b"f1 NO [AUTHENTICATIONFAILED] Authentication failed")
        a.login()


if __name__ == "__main__":
    unittest.main(verbosity=2)
