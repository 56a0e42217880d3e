#!/usr/bin/env bash
# test_imap_mbsync.sh - a full two-way sync with mbsync (isync), a client
# nobody here wrote, against a real havend:
#   - an account of a few thousand messages (imported from a generated
#     mbox, with flags set over IMAP) is pulled into an empty Maildir: every
#     message arrives byte for byte (mbsync stores LF line ends and adds an
#     X-TUID header; both are undone before comparing) with its flags;
#   - then both sides change: locally messages are flagged, marked seen or
#     answered, deleted, trashed, added, and a new folder is made; on the
#     server others are flagged, expunged and appended. After a sync the
#     server (read with imaplib) and the Maildir both hold exactly the
#     expected messages, bodies and flags;
#   - a third sync, this time over STARTTLS with AUTHENTICATE PLAIN, changes
#     nothing on either side (same HIGHESTMODSEQ and message counts per
#     mailbox, same Maildir file names).
# The instance and the Maildir live in a temporary folder; KEEP=1 keeps it.
set -eu
cd "$(dirname "$0")/../.."
command -v mbsync >/dev/null || { echo "FAIL: mbsync is missing (Debian package isync; scripts/deps.sh installs it)" >&2; exit 1; }
[ -x bin/havend ] || { echo "FAIL: bin/havend is not built (run make)" >&2; exit 1; }
exec python3 - <<'PY'
import email.utils
import imaplib
import os
import random
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tests", "lib"))
from haven_instance import Instance  # noqa: E402

USER, PASS = "sync@example.org", "sync-pw-1"
N_INBOX, N_DEV = 2600, 400  # 3000 messages in all
random.seed(20240611)


def fail(msg):
    raise AssertionError(msg)


def gen_message(i, box):
    """A message in canonical CRLF form: what the server must hold."""
    mid = "<%s.%d@gen.example.org>" % (box.replace("/", "."), i)
    subj = random.choice(["status report %d" % i, "=?UTF-8?B?w6l0w6kgJiBoaXZlcg==?= %d" % i,
                          "Re: question %d about the build" % i, "x" * 150 + " %d" % i])
    hdr = ("From: Sender %d <s%d@example.org>\r\nTo: %s\r\nSubject: %s\r\n"
           "Date: %s\r\nMessage-ID: %s\r\n"
           % (i % 97, i % 97, USER, subj,
              email.utils.formatdate(1700000000 + i * 3600, usegmt=True), mid))
    kind = i % 10
    if kind == 7:  # multipart with a binary attachment
        data = bytes(random.getrandbits(8) for _ in range(random.randint(100, 6000)))
        import base64
        b64 = base64.encodebytes(data).decode().replace("\n", "\r\n")
        body = ("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n"
                "--b%d\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached %d\r\n"
                "--b%d\r\nContent-Type: application/octet-stream\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n%s--b%d--\r\n"
                % (i, i, i, i, b64, i))
        return mid, (hdr + body).encode()
    lines = []
    for k in range(random.randint(1, 60 if kind else 600)):
        lines.append(random.choice([
            "line %d of message %d" % (k, i), "", "\tindented with a tab",
            "caf\u00e9 \u65e5\u672c\u8a9e \u00fcber", "=3D quoted-printable-looking",
            "a" * random.randint(1, 900), " leading space", "trailing space ",
            ">quoted reply line", "From: not a header, in the body"]))
    return mid, (hdr + "\r\n" + "\r\n".join(lines) + "\r\n").encode()


def mbox_of(msgs):
    out = []
    for _, m in msgs:
        # Body lines are never "From " at the start, so no mbox quoting.
        out.append(b"From gen@example.org Mon Jan  1 10:00:00 2024\n" +
                   m.replace(b"\r\n", b"\n") + b"\n")
    return b"".join(out)


FLAG_OF = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
LETTER_OF = {v: k for k, v in FLAG_OF.items()}


def strip_tuid(data):
    """mbsync adds one "X-TUID: ..." header to each message it copies."""
    nl = b"\r\n" if b"\r\n" in data else b"\n"
    end = data.find(nl + nl)
    end = end + len(nl) if end >= 0 else len(data)  # the header with its last line end
    head = re.sub(rb"(?m)^X-TUID: [^\r\n]*\r?\n", b"", data[:end], count=1)
    return head + data[end:]


def msgid_of(data):
    m = re.search(rb"(?im)^Message-ID: *(<[^>]+>)", data)
    return m.group(1).decode() if m else None


# ---- reading both sides ----

def server_state(port):
    """{mailbox: {message-id: (body, frozenset of flags)}} and
    {mailbox: (HIGHESTMODSEQ, MESSAGES)} read with imaplib."""
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(USER, PASS)
    typ, lst = c.list()
    names = [re.search(rb'"/" "?([^"]*)"?$', l).group(1).decode() for l in lst]
    state, meta = {}, {}
    for name in names:
        typ, st = c.status('"%s"' % name, "(MESSAGES HIGHESTMODSEQ)")
        m = re.search(rb"MESSAGES (\d+) HIGHESTMODSEQ (\d+)", st[0])
        meta[name] = (int(m.group(2)), int(m.group(1)))
        c.select('"%s"' % name, readonly=True)
        box = {}
        if int(m.group(1)):
            typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags = frozenset(f.decode() for f in re.search(rb"FLAGS \(([^)]*)\)", item[0])
                                  .group(1).split())
                body = strip_tuid(item[1])
                mid = msgid_of(body)
                if mid in box:
                    fail("server: %s twice in %s" % (mid, name))
                box[mid] = (body, flags)
        if len(box) != int(m.group(1)):
            fail("server: %s has %s messages, fetched %d" % (name, m.group(1), len(box)))
        state[name] = box
        c.close()
    c.logout()
    return state, meta


def maildir_folders(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if os.path.isdir(os.path.join(dirpath, "cur")):
            name = os.path.relpath(dirpath, root).replace(os.sep, "/")
            out[name] = dirpath
    return out


def maildir_state(root):
    """{folder: {message-id: (body as CRLF, flags)}} from the Maildir."""
    state = {}
    for name, path in maildir_folders(root).items():
        box = {}
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(path, sub)):
                with open(os.path.join(path, sub, fn), "rb") as f:
                    raw = f.read()
                if b"\r" in raw:
                    fail("maildir file with CR: %s" % fn)
                body = strip_tuid(raw).replace(b"\n", b"\r\n")
                info = fn.split(":2,", 1)[1] if ":2," in fn else ""
                flags = frozenset(FLAG_OF[ch] for ch in info if ch in FLAG_OF)
                mid = msgid_of(body)
                if mid in box:
                    fail("maildir: %s twice in %s" % (mid, name))
                box[mid] = (body, flags)
        state[name] = box
    return state


def maildir_names(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def compare(what, got, want):
    if set(got) != set(want):
        fail("%s: mailboxes differ: got %s, want %s" % (what, sorted(got), sorted(want)))
    for name in want:
        g, w = got[name], want[name]
        if set(g) != set(w):
            extra, missing = sorted(set(g) - set(w))[:5], sorted(set(w) - set(g))[:5]
            fail("%s/%s: %d messages, want %d; extra %s missing %s"
                 % (what, name, len(g), len(w), extra, missing))
        for mid in w:
            if g[mid][0] != w[mid][0]:
                fail("%s/%s: body of %s differs" % (what, name, mid))
            if g[mid][1] != w[mid][1]:
                fail("%s/%s: flags of %s are %s, want %s"
                     % (what, name, mid, sorted(g[mid][1]), sorted(w[mid][1])))
    print("   %s: %s" % (what, ", ".join("%s=%d" % (n, len(want[n])) for n in sorted(want))))


# ---- the test ----

node = Instance(keep=bool(os.environ.get("KEEP")))
ok = False
try:
    work = node.dir
    node.add_user(USER, PASS)
    inbox = [gen_message(i, "INBOX") for i in range(1, N_INBOX + 1)]
    dev = [gen_message(i, "Lists/Dev") for i in range(1, N_DEV + 1)]
    for box, msgs in (("INBOX", inbox), ("Lists/Dev", dev)):
        path = os.path.join(work, box.replace("/", "_") + ".mbox")
        with open(path, "wb") as f:
            f.write(mbox_of(msgs))
        node.haven("import", USER, box, path)
    node.start()
    port = node.ports["imap"]

    print("== server flags before the first sync")
    # expected[mailbox][message-id] = (body, flags): the model both sides must match.
    expected = {"INBOX": {}, "Lists/Dev": {}, "Archive": {}, "Drafts": {}, "Junk": {},
                "Sent": {}, "Trash": {}}
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(USER, PASS)
    for box, msgs in (("INBOX", inbox), ("Lists/Dev", dev)):
        c.select(box)
        groups = {"\\Seen": [], "\\Flagged": [], "\\Answered": [], "\\Draft": []}
        for uid, (mid, body) in enumerate(msgs, 1):
            flags = set()
            if uid % 3 == 0:
                flags.add("\\Seen")
            if uid % 17 == 0:
                flags.add("\\Flagged")
            if uid % 23 == 0:
                flags.add("\\Answered")
            if uid % 101 == 0:
                flags.add("\\Draft")
            for f in flags:
                groups[f].append(str(uid))
            expected[box][mid] = (body, frozenset(flags))
        for f, uids in groups.items():
            for k in range(0, len(uids), 200):
                typ, _ = c.uid("STORE", ",".join(uids[k:k + 200]), "+FLAGS.SILENT", "(%s)" % f)
                assert typ == "OK"
    c.logout()
    got, meta = server_state(port)
    compare("server after import", got, expected)

    maildir = os.path.join(work, "Maildir")
    os.mkdir(maildir)
    version = subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", version)
    # isync 1.5 renamed SSLType to TLSType; Debian 12 has 1.4.
    tls_key = "TLSType" if m and (int(m.group(1)), int(m.group(2))) >= (1, 5) else "SSLType"
    rc = os.path.join(work, "mbsyncrc")

    def write_rc(security):
        with open(rc, "w") as f:
            # The test needs no durability from the client: skip its fsyncs.
            f.write("""FSync no

IMAPAccount haven
Host 127.0.0.1
Port %d
User %s
Pass %s
%s

IMAPStore far
Account haven

MaildirStore near
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel haven
Far :far:
Near :near:
Patterns *
Create Both
Expunge Both
Sync All
SyncState *
""" % (port, USER, PASS, security, maildir, maildir))

    # Plain LOGIN from loopback first; the last sync uses STARTTLS with the
    # instance's self-signed certificate and AUTHENTICATE PLAIN.
    write_rc("%s None\nAuthMechs LOGIN" % tls_key)

    def mbsync():
        p = subprocess.run(["mbsync", "-c", rc, "haven"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True)
        out = (p.stdout + p.stderr).strip()
        if p.returncode != 0:
            fail("mbsync exited %d:\n%s" % (p.returncode, out[-3000:]))
        for ln in out.splitlines():
            if "Password is being sent in the clear" not in ln:
                print("   mbsync: " + ln)

    print("== first sync: server -> empty Maildir")
    mbsync()
    compare("maildir after first sync", maildir_state(maildir), expected)
    got, meta1 = server_state(port)
    compare("server after first sync", got, expected)

    print("== changes on both sides")
    folders = maildir_folders(maildir)
    def files_of(name):
        path = folders[name]
        out = []
        for sub in ("cur", "new"):
            for fn in sorted(os.listdir(os.path.join(path, sub))):
                with open(os.path.join(path, sub, fn), "rb") as f:
                    mid = msgid_of(f.read())
                out.append((mid, os.path.join(path, sub, fn)))
        return sorted(out)

    def set_local_flags(path, add):
        d, fn = os.path.split(path)
        base, _, info = fn.partition(":2,")
        letters = "".join(sorted(set(info) | set(add)))
        new = os.path.join(os.path.dirname(d), "cur", base + ":2," + letters)
        os.rename(path, new)

    inbox_files = files_of("INBOX")
    random.shuffle(inbox_files)
    local_touched = set()
    picks = iter(inbox_files)
    for action, count in (("S", 50), ("F", 20), ("R", 10), ("del", 30), ("T", 15)):
        for _ in range(count):
            mid, path = next(picks)
            local_touched.add(mid)
            body, flags = expected["INBOX"][mid]
            if action == "del" or action == "T":
                if action == "del":
                    os.unlink(path)
                else:
                    set_local_flags(path, "T")  # trashed: Expunge Both removes it everywhere
                del expected["INBOX"][mid]
            else:
                set_local_flags(path, action)
                expected["INBOX"][mid] = (body, flags | {FLAG_OF[action]})
    for mid, path in files_of("Lists/Dev")[:12]:  # some in the other folder too
        local_touched.add(mid)
        set_local_flags(path, "S")
        body, flags = expected["Lists/Dev"][mid]
        expected["Lists/Dev"][mid] = (body, flags | {"\\Seen"})

    def local_new(folder, i, flags=""):
        mid, body = gen_message(100000 + i, folder)
        path = os.path.join(maildir, *folder.split("/"))
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        fn = "1700000000.M%dP1.localhost" % i + (":2," + flags if flags else "")
        with open(os.path.join(path, "cur" if flags else "new", fn), "wb") as f:
            f.write(body.replace(b"\r\n", b"\n"))
        expected.setdefault(folder, {})[mid] = (body, frozenset(FLAG_OF[ch] for ch in flags))

    for i in range(25):
        local_new("INBOX", i, "S" if i % 5 == 0 else "")
    for i in range(25, 30):
        local_new("Local/Notes", i, "F" if i == 25 else "")

    # Meanwhile, on the server (other messages than the local changes).
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(USER, PASS)
    c.select("INBOX")
    untouched = [uid for uid, (mid, _) in enumerate(inbox, 1)
                 if mid not in local_touched and mid in expected["INBOX"]]
    for uid in untouched[:5]:
        c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Flagged)")
        mid = inbox[uid - 1][0]
        body, flags = expected["INBOX"][mid]
        expected["INBOX"][mid] = (body, flags | {"\\Flagged"})
    for uid in untouched[5:9]:
        c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        del expected["INBOX"][inbox[uid - 1][0]]
    typ, _ = c.expunge()
    assert typ == "OK"
    for i in range(7):
        mid, body = gen_message(200000 + i, "INBOX")
        typ, _ = c.append("INBOX", None, None, body)
        assert typ == "OK"
        expected["INBOX"][mid] = (body, frozenset())
    c.logout()

    print("== second sync: both ways")
    mbsync()
    got, meta2 = server_state(port)
    compare("server after second sync", got, expected)
    compare("maildir after second sync", maildir_state(maildir), expected)
    if "Local/Notes" not in meta2:
        fail("the new local folder was not created on the server")

    print("== third sync, over STARTTLS: nothing to do")
    names_before = maildir_names(maildir)
    write_rc("%s STARTTLS\nCertificateFile %s\nAuthMechs PLAIN"
             % (tls_key, os.path.join(work, "node", "tls", "cert.pem")))
    mbsync()
    with open(os.path.join(work, "havend.log")) as f:
        if not re.search(r"user=%s login peer=\S+ tls=1" % re.escape(USER), f.read()):
            fail("the last sync did not log in over TLS")
    got, meta3 = server_state(port)
    compare("server after third sync", got, expected)
    if meta3 != meta2:
        fail("the server changed on a sync with nothing to do: %s -> %s" % (meta2, meta3))
    if maildir_names(maildir) != names_before:
        fail("the Maildir changed on a sync with nothing to do")
    total = sum(len(v) for v in expected.values())
    print("PASS: %d messages in %d mailboxes agree on both sides" % (total, len(expected)))
    ok = True
finally:
    if not ok:
        print("havend log:\n" + node.read_log())
        node.keep = True
        print("instance kept in", node.dir)
    node.close()
PY
