#!/usr/bin/env python3
"""SORT, UID SORT, ESORT, THREAD and UID THREAD (RFC 5256, 5267, 5957)
against a real havend: every sort criterion, REVERSE, combined keys, a
search that narrows the set, both threading algorithms on reply chains with
a missing parent, a duplicate Message-ID, a References loop and subject
merging, a 2,500-message mailbox (a 2,000-deep reply chain), a 30,000-id
References header, and bad input.

The expected answers below were worked out by hand from the messages; the
comments next to them say why."""
import imaplib
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402

USER, PW = "bob@example.org", "s3cret-pw"


def message(headers, body_len):
    head = "".join("%s: %s\r\n" % (k, v) for k, v in headers)
    return (head + "\r\n" + "x" * body_len + "\r\n").encode()


# Mailbox "Sort": nine messages, appended after two that are expunged, so
# uid = sequence number + 2. Sent dates (UTC) and internal dates:
#   1 Jan 05 10:00  Feb 01     4 Jan 03 12:00  Feb 05     7 (no Date)  Dec 31 2023
#   2 Jan 06 09:00  Feb 03     5 Jan 04 12:00  Feb 04     8 Jan 05 09:30  Feb 07
#   3 Jan 07 08:00  Feb 02     6 Jan 10 12:00  Feb 06     9 Jan 05 10:00  Feb 08
# Bodies of 1000 * k bytes fix the SIZE order whatever the header lengths.
SORT_MSGS = [
    ([("From", "Aaron Zed <zed@x.org>"), ("To", "bob@example.org"), ("Cc", "carol@x.org"),
      ("Subject", "Project plan"), ("Date", "Fri, 05 Jan 2024 10:00:00 +0000"),
      ("Message-ID", "<a1@x>")], 3000, "01-Feb-2024 00:00:00 +0000"),
    ([("From", "alice@x.org"), ("To", "Yvonne <yv@x.org>"), ("Subject", "Re: Project plan"),
      ("Date", "Sat, 06 Jan 2024 09:00:00 +0000"), ("Message-ID", "<a2@x>"),
      ("In-Reply-To", "<a1@x>"), ("References", "<a1@x>")], 1000, "03-Feb-2024 00:00:00 +0000"),
    ([("From", "\"Xavier\" <bob@x.org>"), ("To", "Adam <adam@x.org>"), ("Cc", "zoe@x.org"),
      ("Subject", "Re: Fwd: Project plan"), ("Date", "Sun, 07 Jan 2024 08:00:00 +0000"),
      ("Message-ID", "<a3@x>"), ("References", "<a1@x>\r\n <a2@x>")], 5000,
     "02-Feb-2024 00:00:00 +0000"),
    # 4 and 5 answer a message that is not in the mailbox: one says so in
    # References, the other only in In-Reply-To.
    ([("From", "carol@x.org"), ("To", "dave@x.org"), ("Subject", "Re: Lunch"),
      ("Date", "Wed, 03 Jan 2024 12:00:00 +0000"), ("Message-ID", "<b2@x>"),
      ("References", "<missing@x>")], 2000, "05-Feb-2024 00:00:00 +0000"),
    ([("From", "Dave <dave@x.org>"), ("To", "carol@x.org"), ("Subject", "Re: Lunch"),
      ("Date", "Thu, 04 Jan 2024 12:00:00 +0000"), ("Message-ID", "<b3@x>"),
      ("In-Reply-To", "<missing@x> (Carol's message)")], 8000, "04-Feb-2024 00:00:00 +0000"),
    ([("From", "eve@x.org"), ("To", "bob@example.org"), ("Subject", "Lunch"),
      ("Date", "Wed, 10 Jan 2024 12:00:00 +0000"), ("Message-ID", "<b9@x>")], 4000,
     "06-Feb-2024 00:00:00 +0000"),
    ([("From", "Yann <yann@x.org>"), ("To", "Bob <bob@example.org>"),
      ("Subject", "[PATCH] Zebra"), ("Message-ID", "<c1@x>")], 7000,
     "31-Dec-2023 12:00:00 +0000"),
    # 11:30 +0200 is 09:30 UTC: before message 1 although it reads later.
    ([("From", "Al <al@x.org>"), ("To", "bob@example.org"), ("Subject", "apple pie"),
      ("Date", "Fri, 05 Jan 2024 11:30:00 +0200"), ("Message-ID", "<d1@x>")], 6000,
     "07-Feb-2024 00:00:00 +0000"),
    # Same sent date as 1 (ties go by sequence number); the Message-ID of 8
    # again (a duplicate: 9 gets one of its own); no To; no references, so
    # only its subject joins it to 8.
    ([("From", "Al <al@x.org>"), ("Subject", "Re: Fwd: apple pie"),
      ("Date", "Fri, 05 Jan 2024 10:00:00 +0000"), ("Message-ID", "<d1@x>")], 9000,
     "08-Feb-2024 00:00:00 +0000"),
]

# Mailbox "Threads": subject merging, a References loop, a tree, no subjects.
THREAD_MSGS = [
    [("Subject", "Status"), ("Date", "Mon, 01 Jan 2024 10:00:00 +0000"), ("Message-ID", "<s1@y>")],
    [("Subject", "Status"), ("Date", "Tue, 02 Jan 2024 10:00:00 +0000"), ("Message-ID", "<s2@y>")],
    [("Subject", "Re: Status"), ("Date", "Wed, 03 Jan 2024 10:00:00 +0000"),
     ("Message-ID", "<s3@y>")],
    [("Subject", "Loop"), ("Date", "Thu, 04 Jan 2024 10:00:00 +0000"), ("Message-ID", "<t4@y>"),
     ("References", "<t5@y>")],
    [("Subject", "Re: Loop"), ("Date", "Fri, 05 Jan 2024 10:00:00 +0000"),
     ("Message-ID", "<t5@y>"), ("References", "<t4@y>")],
    [("Subject", "Tree"), ("Date", "Sat, 06 Jan 2024 10:00:00 +0000"), ("Message-ID", "<r@y>")],
    [("Subject", "Re: Tree"), ("Date", "Sun, 07 Jan 2024 10:00:00 +0000"),
     ("Message-ID", "<t7@y>"), ("References", "<r@y>")],
    [("Subject", "Re: Tree"), ("Date", "Mon, 08 Jan 2024 10:00:00 +0000"),
     ("Message-ID", "<t8@y>"), ("References", "<r@y>")],
    [("Subject", "Re: Tree"), ("Date", "Tue, 09 Jan 2024 10:00:00 +0000"),
     ("Message-ID", "<t9@y>"), ("References", "<r@y> <t7@y>")],
    [("From", "nobody@y"), ("Date", "Wed, 10 Jan 2024 10:00:00 +0000")],
    [("From", "nobody@y"), ("Date", "Thu, 11 Jan 2024 10:00:00 +0000")],
]

CHAIN, WIDE = 2000, 500


def big_mbox(path):
    """CHAIN messages each answering the one before (In-Reply-To only),
    then a root with WIDE-1 direct answers; dates rise by one minute."""
    with open(path, "w") as f:
        for i in range(1, CHAIN + WIDE + 1):
            t = i - 1
            date = "%02d Jan 2024 %02d:%02d:00 +0000" % (1 + t // 1440, t // 60 % 24, t % 60)
            f.write("From sender@z Mon Jan  1 00:00:00 2024\n")
            f.write("From: sender@z\nDate: %s\nMessage-ID: <c%d@z>\n" % (date, i))
            if 1 < i <= CHAIN:
                f.write("Subject: Re: chain\nIn-Reply-To: <c%d@z>\n" % (i - 1))
            elif i == 1:
                f.write("Subject: chain\n")
            elif i == CHAIN + 1:
                f.write("Subject: wide\n")
            else:
                f.write("Subject: Re: wide\nReferences: <c%d@z>\n" % (CHAIN + 1))
            f.write("\nmessage %d\n\n" % i)


class SortTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Instance()
        cls.node.add_user(USER, PW)
        fd, mbox = tempfile.mkstemp(suffix=".mbox", dir=cls.node.dir)
        os.close(fd)
        big_mbox(mbox)
        cls.node.haven("import", USER, "Big", mbox)
        cls.node.start()
        c = imaplib.IMAP4("127.0.0.1", cls.node.ports["imap"])
        c.login(USER, PW)
        c.create("Sort")
        for _ in range(2):
            c.append("Sort", None, None, message([("Subject", "junk")], 10))
        c.select("Sort")
        c.store("1:2", "+FLAGS", "\\Deleted")
        c.expunge()
        for headers, body, internal in SORT_MSGS:
            typ, _ = c.append("Sort", None, '"%s"' % internal, message(headers, body))
            assert typ == "OK"
        c.create("Threads")
        for headers in THREAD_MSGS:
            c.append("Threads", None, None, message(headers, 10))
        c.logout()

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def setUp(self):
        self.c = imaplib.IMAP4("127.0.0.1", self.node.ports["imap"])
        self.c.login(USER, PW)

    def tearDown(self):
        self.c.logout()

    def raw(self, text):
        """Sends one command; returns (untagged lines, tagged line) as str."""
        tag = self.c._new_tag()
        self.c.send(tag + b" " + text.encode() + b"\r\n")
        untagged = []
        while True:
            line = self.c.readline().decode().rstrip("\r\n")
            if line.startswith(tag.decode() + " "):
                return untagged, line[len(tag) + 1:]
            untagged.append(line)

    def answer(self, text, kind):
        """The numbers (or thread text) of the one untagged `kind` response."""
        untagged, tagged = self.raw(text)
        self.assertTrue(tagged.startswith("OK"), (text, tagged))
        got = [u for u in untagged if u.split(" ")[:2] == ["*", kind]]
        self.assertEqual(len(got), 1, (text, untagged))
        return got[0][len("* " + kind):].strip()

    def sort(self, crit, search="ALL", uid=False):
        cmd = "%sSORT (%s) UTF-8 %s" % ("UID " if uid else "", crit, search)
        text = self.answer(cmd, "SORT")
        return [int(x) for x in text.split()] if text else []

    def thread(self, algo, search="ALL", uid=False):
        return self.answer("%sTHREAD %s UTF-8 %s" % ("UID " if uid else "", algo, search),
                           "THREAD")

    def test_01_capabilities(self):
        caps = self.c.capabilities
        for cap in ("SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT",
                    "THREAD=REFERENCES"):
            self.assertIn(cap, caps)

    def test_02_each_criterion(self):
        self.c.select("Sort", readonly=True)
        cases = {
            # internal dates
            "ARRIVAL": [7, 1, 3, 2, 5, 4, 6, 8, 9],
            # sent dates; 7 has none (its internal date, Dec 31, counts);
            # 1 and 9 were sent at the same second: sequence order
            "DATE": [7, 4, 5, 8, 1, 9, 2, 3, 6],
            # addr-mailbox of the first From: al al alice bob carol dave eve yann zed
            "FROM": [8, 9, 2, 3, 4, 5, 6, 7, 1],
            # base subjects: apple pie, lunch, project plan, zebra ([PATCH] dropped)
            "SUBJECT": [8, 9, 4, 5, 6, 1, 2, 3, 7],
            # first To: (none) adam bob*4 carol dave yv
            "TO": [9, 3, 1, 6, 7, 8, 5, 4, 2],
            # first Cc: (none)*7 carol zoe
            "CC": [2, 4, 5, 6, 7, 8, 9, 1, 3],
            "SIZE": [2, 4, 1, 6, 3, 8, 7, 5, 9],
            # display names, else the address: "Aaron Zed", Al, Al,
            # alice@x.org, carol@x.org, Dave, eve@x.org, Xavier, Yann
            "DISPLAYFROM": [1, 8, 9, 2, 4, 5, 6, 3, 7],
            # (none) Adam Bob bob@example.org*3 carol@x.org dave@x.org Yvonne
            "DISPLAYTO": [9, 3, 7, 1, 6, 8, 5, 4, 2],
        }
        for crit, want in cases.items():
            self.assertEqual(self.sort(crit), want, crit)
            self.assertEqual(self.sort(crit.lower()), want, crit.lower())

    def test_03_sizes_are_real(self):
        self.c.select("Sort", readonly=True)
        typ, data = self.c.fetch("1:*", "(RFC822.SIZE)")
        sizes = {}
        for line in data:
            m = re.match(rb"(\d+) \(RFC822\.SIZE (\d+)\)", line)
            sizes[int(m.group(1))] = int(m.group(2))
        self.assertEqual(self.sort("SIZE"), sorted(sizes, key=lambda s: (sizes[s], s)))

    def test_04_reverse_and_combined(self):
        self.c.select("Sort", readonly=True)
        # REVERSE applies to its key only: the 1/9 tie stays in sequence order
        self.assertEqual(self.sort("REVERSE DATE"), [6, 3, 2, 1, 9, 8, 5, 4, 7])
        self.assertEqual(self.sort("REVERSE FROM"), [1, 7, 6, 5, 4, 3, 2, 8, 9])
        self.assertEqual(self.sort("SUBJECT REVERSE DATE"), [9, 8, 6, 5, 4, 3, 2, 1, 7])
        # To bob@example.org: 1, 6, 7, 8 by subject; then by size, largest first
        self.assertEqual(self.sort("TO SUBJECT"), [9, 3, 8, 6, 1, 7, 5, 4, 2])
        self.assertEqual(self.sort("TO REVERSE SIZE"), [9, 3, 7, 8, 6, 1, 5, 4, 2])
        self.assertEqual(self.sort("CC ARRIVAL"), [7, 2, 5, 4, 6, 8, 9, 1, 3])

    def test_05_uid_forms_and_search(self):
        self.c.select("Sort", readonly=True)
        self.assertEqual(self.sort("DATE", uid=True), [9, 6, 7, 10, 3, 11, 4, 5, 8])
        self.assertEqual(self.sort("DATE", "FROM al@x.org"), [8, 9])
        # internal date on or after Feb 3: 2, 4, 5, 6, 8, 9
        self.assertEqual(self.sort("SUBJECT", "SINCE 3-Feb-2024"), [8, 9, 4, 5, 6, 2])
        self.assertEqual(self.sort("SUBJECT", "SINCE 3-Feb-2024", uid=True),
                         [10, 11, 6, 7, 8, 4])
        self.assertEqual(self.sort("REVERSE ARRIVAL", "OR SUBJECT lunch TO adam"),
                         [6, 4, 5, 3])
        self.assertEqual(self.sort("DATE", "SUBJECT nothing-like-this"), [])
        # a charset may be a quoted string, any case
        text = self.answer('SORT (DATE) "us-ascii" 3:5', "SORT")
        self.assertEqual(text, "4 5 3")

    def test_06_esort(self):
        self.c.select("Sort", readonly=True)
        untagged, tagged = self.raw("SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL")
        self.assertTrue(tagged.startswith("OK"), tagged)
        self.assertRegex(untagged[0], r'^\* ESEARCH \(TAG "[^"]+"\) MIN 7 MAX 6 COUNT 9$')
        untagged, tagged = self.raw("SORT RETURN (ALL) (ARRIVAL) UTF-8 ALL")
        self.assertRegex(untagged[0], r'\) ALL 7,1,3,2,5,4,6,8:9$')
        untagged, tagged = self.raw("UID SORT RETURN () (DATE) UTF-8 ALL")
        self.assertRegex(untagged[0], r'\) UID ALL 9,6:7,10,3,11,4:5,8$')
        untagged, tagged = self.raw("SORT RETURN (COUNT MIN) (DATE) UTF-8 SUBJECT nothing")
        self.assertRegex(untagged[0], r'\) COUNT 0$')

    def test_07_thread_orderedsubject(self):
        self.c.select("Sort", readonly=True)
        # by base subject, threads by the date of their first message:
        # zebra (7, Dec 31), lunch (4 5 6), apple pie (8 9), project plan (1 2 3)
        self.assertEqual(self.thread("ORDEREDSUBJECT"), "(7)(4 (5)(6))(8 9)(1 (2)(3))")
        self.assertEqual(self.thread("ORDEREDSUBJECT", uid=True),
                         "(9)(6 (7)(8))(10 11)(3 (4)(5))")
        self.c.select("Threads", readonly=True)
        # no subject (10, 11) is a subject of its own here
        self.assertEqual(self.thread("ORDEREDSUBJECT"), "(1 (2)(3))(4 5)(6 (7)(8)(9))(10 11)")

    def test_08_thread_references(self):
        self.c.select("Sort", readonly=True)
        # 4 and 5 hang under a dummy for <missing@x>; 6 ("Lunch") joins that
        # dummy by subject; 9 ("Re: Fwd: apple pie", duplicate id, no
        # references) becomes a child of 8 by subject; 1 <- 2 <- 3.
        self.assertEqual(self.thread("REFERENCES"), "(7)((4)(5)(6))(8 9)(1 2 3)")
        self.assertEqual(self.thread("REFERENCES", uid=True), "(9)((6)(7)(8))(10 11)(3 4 5)")
        # the search narrows the set first: 1, 2, 3 and 7 are left out
        self.assertEqual(self.thread("REFERENCES", "SINCE 4-Feb-2024"), "((4)(5)(6))(8 9)")
        self.assertEqual(self.thread("REFERENCES", "SUBJECT nothing-like-this"), "")
        self.c.select("Threads", readonly=True)
        # 1 and 2 "Status" (neither a reply) get a dummy parent, which 3
        # ("Re: Status") joins; 4 and 5 reference each other: the loop is
        # not made, 4 stays under 5; 6 <- 7 <- 9 and 6 <- 8; 10 and 11 have
        # no subject and are never merged.
        self.assertEqual(self.thread("REFERENCES"), "((1)(2)(3))(5 4)(6 (7 9)(8))(10)(11)")

    def test_09_large_mailbox(self):
        self.c.select("Big", readonly=True)
        n = CHAIN + WIDE
        want = "(" + " ".join(str(i) for i in range(1, CHAIN + 1)) + ")"
        want += "(%d " % (CHAIN + 1) + "".join("(%d)" % i for i in range(CHAIN + 2, n + 1)) + ")"
        self.assertEqual(self.thread("REFERENCES"), want)
        self.assertEqual(self.sort("REVERSE DATE"), list(range(n, 0, -1)))
        self.assertEqual(self.sort("SUBJECT DATE"), list(range(1, n + 1)))
        self.assertEqual(self.thread("ORDEREDSUBJECT"), "(1 " + "".join(
            "(%d)" % i for i in range(2, CHAIN + 1)) + ")(%d " % (CHAIN + 1) + "".join(
            "(%d)" % i for i in range(CHAIN + 2, n + 1)) + ")")

    def test_10_bad_input(self):
        _, tagged = self.raw("SORT (DATE) UTF-8 ALL")
        self.assertTrue(tagged.startswith("BAD"), tagged)  # nothing selected
        self.c.select("Sort", readonly=True)
        for cmd in ("SORT (FOO) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
                    "SORT (DATE REVERSE) UTF-8 ALL", "SORT (REVERSE REVERSE DATE) UTF-8 ALL",
                    "SORT () UTF-8 ALL", "SORT DATE UTF-8 ALL", "SORT (DATE) UTF-8",
                    "SORT (DATE)", "SORT (DATE) UTF-8 FROBNICATE",
                    "SORT RETURN (FOO) (DATE) UTF-8 ALL",
                    "UID SORT (SIZE) UTF-8 SINCE notadate", "THREAD FOO UTF-8 ALL",
                    "THREAD (REFERENCES) UTF-8 ALL", "THREAD REFERENCES UTF-8",
                    "UID THREAD", "THREAD ORDEREDSUBJECT UTF-8 (", "SORT"):
            untagged, tagged = self.raw(cmd)
            self.assertTrue(tagged.startswith("BAD"), (cmd, tagged))
            self.assertFalse([u for u in untagged if u.startswith(("* SORT", "* THREAD"))], cmd)
        for cmd in ("SORT (DATE) KOI8-R ALL", "UID SORT (DATE) ISO-8859-99 ALL",
                    "THREAD REFERENCES X-UNKNOWN ALL"):
            untagged, tagged = self.raw(cmd)
            self.assertTrue(tagged.startswith("NO [BADCHARSET"), (cmd, tagged))
        _, tagged = self.raw("NOOP")
        self.assertTrue(tagged.startswith("OK"), tagged)
        self.assertEqual(self.sort("DATE"), [7, 4, 5, 8, 1, 9, 2, 3, 6])

    def test_11_long_references(self):
        # 30,000 references to messages that do not exist: a chain of
        # dummies, pruned away; the second message hangs in its middle.
        refs = ["<h%d@h>" % i for i in range(30000)]
        folded = "\r\n ".join(" ".join(refs[i:i + 50]) for i in range(0, len(refs), 50))
        self.c.create("Hostile")
        self.c.append("Hostile", None, None, message(
            [("Subject", "Hostile"), ("Date", "01 Jan 2024 10:00:00 +0000"),
             ("Message-ID", "<h-last@h>"), ("References", folded)], 10))
        self.c.append("Hostile", None, None, message(
            [("Subject", "Re: Hostile"), ("Date", "02 Jan 2024 10:00:00 +0000"),
             ("In-Reply-To", "<h15000@h>")], 10))
        self.c.select("Hostile", readonly=True)
        self.assertEqual(self.thread("REFERENCES"), "((1)(2))")
        self.assertEqual(self.sort("SUBJECT REVERSE DATE"), [2, 1])


if __name__ == "__main__":
    unittest.main(verbosity=2)
