#!/usr/bin/env python3
"""Online account moves (`haven move`) on a two-node set-up: two havend
instances serving stores "a" and "b", one IMAP proxy (on node A), and one
directory in a real PostgreSQL server started for the test.

  1. A move under load: an IMAP client through the proxy keeps flagging
     messages (every acknowledged STORE is recorded), another reads, and
     SMTP deliveries to the account run all through the move. Afterwards:
     every message that got 250 is in the mailbox exactly once, every
     acknowledged flag change is there, the clients reconnected at most
     once, IMAP through the proxy reaches store b, and mail sent afterwards
     is routed to store b by node A's queue.
  2. Moving back to store a, which holds an older copy: only the difference
     travels (the log says so).
  3. A move killed with SIGKILL half-way (the mover slowed by a bandwidth
     limit) resumes when run again and finishes; replcheck-style digests
     agree (the move checks them itself and exits 0 only when they do).
  4. A failed move rolls back: a target that refuses (the account lives
     there and is active) leaves the account active on its source,
     writable, with the reason printed.
  5. Evacuation: `haven move --from a --to b --slots 2` moves every account
     left on a; its progress file says so.
Waits are bounded polls; nothing asserts how long anything takes (the
freeze time is printed for the record; bench/move measures it).
"""
import imaplib
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance, free_port, HAVEN  # noqa: E402
from pg_server import PgServer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PW = "pw-alice-1"


def setup_node(inst, store, directory, repl_port, proxy_port=None):
    inst.serve_store(store, directory, repl_port)
    if proxy_port:
        inst.set_conf("proxy_port", str(proxy_port))


def mbox(n, tag, big_every=50):
    out = []
    for i in range(n):
        body = "line of message %d\n" % i
        if i % big_every == 0:
            body = ("y" * 99 + "\n") * 1500  # 150 KB: a blob of its own
        out.append("From sender@example.net Mon Jan  1 00:00:00 2024\n"
                   "From: sender@example.net\nTo: alice@example.org\n"
                   "Subject: %s %d\nMessage-ID: <%s-%d@example.net>\n\n%s\n" % (tag, i, tag, i, body))
    return "".join(out)


def imap_login(port, user=None, pw=PW, tries=100):
    last = None
    for _ in range(tries):
        try:
            c = imaplib.IMAP4("127.0.0.1", port)
            c.login(user or "alice@example.org", pw)
            return c
        except (imaplib.IMAP4.error, OSError) as e:
            last = e
            time.sleep(0.1)
    raise AssertionError("login through port %d failed: %s" % (port, last))


def message_ids(c):
    """(Message-IDs of INBOX in uid order, {uid: flags})."""
    typ, _ = c.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    ids = []
    for d in data:
        if isinstance(d, tuple):
            m = re.search(rb"<([^>]+)>", d[1])
            if m:
                ids.append(m.group(1).decode())
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK", data
    flags = {}
    for d in data:
        if isinstance(d, bytes):
            u = re.search(rb"UID (\d+)", d)
            f = re.search(rb"FLAGS \(([^)]*)\)", d)
            if u and f:
                flags[int(u.group(1))] = f.group(1).decode().split()
    return ids, flags


def move(node, *args, check=True):
    p = node.haven("move", *args, check=False)
    if check and p.returncode != 0:
        raise AssertionError("haven move %s failed (%d): %s%s\nlog:\n%s" % (
            " ".join(args), p.returncode, p.stdout, p.stderr, node.read_log()[-3000:]))
    return p


def store_of(node, account):
    out = node.haven("user", "show", account).stdout
    m = re.search(r"store[:=]\s*(\S+)", out)
    assert m, out
    return m.group(1)


class Flagger(threading.Thread):
    """Flags messages through the proxy, one STORE at a time; remembers
    every acknowledged change and counts reconnects."""

    def __init__(self, port, uids):
        super().__init__(daemon=True)
        self.port, self.uids = port, uids
        self.acked = {}
        self.reconnects = 0
        self.stop = False
        self.errors = []

    def run(self):
        c = imap_login(self.port)
        c.select("INBOX")
        i = 0
        while not self.stop:
            uid = self.uids[i % len(self.uids)]
            i += 1
            try:
                typ, data = c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")
                if typ == "OK":
                    self.acked[uid] = True
            except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError) as e:
                # BYE [UNAVAILABLE] or a NO during the freeze: reconnect.
                self.reconnects += 1
                try:
                    c = imap_login(self.port)
                    c.select("INBOX")
                except AssertionError as e2:
                    self.errors.append(str(e2))
                    return
            time.sleep(0.005)
        try:
            c.logout()
        except Exception:
            pass


class Sender(threading.Thread):
    """Delivers over SMTP to node A; remembers the Message-IDs that got 250."""

    def __init__(self, port, tag):
        super().__init__(daemon=True)
        self.port, self.tag = port, tag
        self.accepted = []
        self.stop = False

    def run(self):
        i = 0
        while not self.stop:
            mid = "%s-%d@example.net" % (self.tag, i)
            i += 1
            msg = ("From: s@example.net\r\nTo: alice@example.org\r\nSubject: live %d\r\n"
                   "Message-ID: <%s>\r\n\r\nhello %d\r\n" % (i, mid, i))
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                    s.sendmail("s@example.net", ["alice@example.org"], msg)
                self.accepted.append(mid)
            except (smtplib.SMTPException, OSError):
                pass
            time.sleep(0.01)


def wait_ids(port, want, tries=600):
    ids = []
    for _ in range(tries):
        c = imap_login(port)
        ids, flags = message_ids(c)
        c.logout()
        if set(want) <= set(ids):
            return ids, flags
        time.sleep(0.2)
    missing = sorted(set(want) - set(ids))
    raise AssertionError("%d accepted messages never arrived, e.g. %s" % (len(missing), missing[:5]))


def main():
    if not os.path.isdir(os.path.join(ROOT, "tests", "node", "node_modules", "imapflow")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=os.path.join(ROOT, "tests", "node"),
                       check=True)
    with PgServer() as pg:
        pg.createdb("haven")
        directory = "pg:" + pg.conninfo("haven")
        proxy_port = free_port()
        repl_a, repl_b = free_port(), free_port()
        with Instance() as a, Instance() as b:
            setup_node(a, "a", directory, repl_a, proxy_port)
            setup_node(b, "b", directory, repl_b)
            a.haven("store", "add", "a", "127.0.0.1:%d" % a.ports["imap"],
                    "--lmtp", "127.0.0.1:%d" % a.ports["lmtp"], "--repl", "127.0.0.1:%d" % repl_a)
            a.haven("store", "add", "b", "127.0.0.1:%d" % b.ports["imap"],
                    "--lmtp", "127.0.0.1:%d" % b.ports["lmtp"], "--repl", "127.0.0.1:%d" % repl_b)
            a.add_user("alice@example.org", PW)
            for i in range(4):
                a.add_user("user%d@example.org" % i, "pw-%d" % i)
            src = os.path.join(a.dir, "in.mbox")
            with open(src, "w") as f:
                f.write(mbox(2000, "old"))
            a.haven("import", "alice@example.org", "INBOX", src)
            a.start()
            b.start()
            a.wait_smtp()
            a.wait_port(proxy_port)
            a.wait_port(repl_a)
            b.wait_port(repl_b)

            # ---- 1. a move under load ----
            c = imap_login(proxy_port)
            ids0, _ = message_ids(c)
            assert len(ids0) == 2000, len(ids0)
            c.select("INBOX", readonly=True)
            typ, data = c.uid("SEARCH", "ALL")
            uids = [int(x) for x in data[0].split()][:400]
            c.logout()
            flagger = Flagger(proxy_port, uids[:300])
            sender = Sender(a.ports["smtp"], "live")
            stop_file = os.path.join(a.dir, "stop-imapflow")
            flow = subprocess.Popen(
                ["node", os.path.join(ROOT, "tests", "node", "imapflow_move_client.js")],
                stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, HAVEN_IMAP_PORT=str(proxy_port), HAVEN_USER="alice@example.org",
                         HAVEN_PASS=PW, HAVEN_STOP_FILE=stop_file,
                         HAVEN_UIDS=",".join(str(u) for u in uids[300:] or uids[-100:])))
            flagger.start()
            sender.start()
            while len(sender.accepted) < 20 or len(flagger.acked) < 20:
                time.sleep(0.1)
            p = move(a, "alice@example.org", "--to", "b")
            print("move 1:", p.stdout.strip())
            m = re.search(r"freeze_ms=(\d+)", p.stdout)
            assert m, p.stdout
            # a little more load on the new place, through the same clients
            n_after = len(sender.accepted) + 20
            while len(sender.accepted) < n_after:
                time.sleep(0.1)
            flagger.stop = sender.stop = True
            flagger.join(60)
            sender.join(60)
            open(stop_file, "w").close()
            flow_out, _ = flow.communicate(timeout=120)
            fres = json.loads(flow_out.strip().splitlines()[-1])
            assert fres["reconnects"] >= 0 and not fres["errors"], fres
            assert fres["reconnects"] <= 1, "imapflow reconnected %d times" % fres["reconnects"]
            assert fres["acked"], "imapflow had no change acknowledged"
            assert not flagger.errors, flagger.errors
            assert flagger.reconnects <= 1, "flagger reconnected %d times" % flagger.reconnects
            assert store_of(a, "alice@example.org") == "b"
            ids, flags = wait_ids(proxy_port, sender.accepted)
            dups = [x for x in set(ids) if ids.count(x) > 1]
            assert not dups, "doubled after the move: %s" % dups[:5]
            assert set(ids0) <= set(ids), "old messages lost"
            lost = [u for u in flagger.acked if "\\Flagged" not in flags.get(u, [])]
            assert not lost, "acknowledged flag changes lost: %s" % lost[:5]
            lost = [u for u in fres["acked"] if "$Moved" not in flags.get(u, [])]
            assert not lost, "acknowledged imapflow keyword changes lost: %s" % lost[:5]
            # the mail is on store b: node B's own IMAP serves it, node A's refuses
            cb = imap_login(b.ports["imap"])
            ids_b, _ = message_ids(cb)
            cb.logout()
            assert set(sender.accepted) <= set(ids_b)
            try:
                ca = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
                typ, data = ca.login("alice@example.org", PW)
                raise AssertionError("node A still serves alice after the move: %s" % data)
            except imaplib.IMAP4.error as e:
                assert "UNAVAILABLE" in str(e), e
            # mail sent now is routed by node A's queue to store b
            with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=30) as s:
                s.sendmail("s@example.net", ["alice@example.org"],
                           "From: s@example.net\r\nMessage-ID: <after-move@example.net>\r\n"
                           "Subject: after\r\n\r\nafter\r\n")
            b_ids, _ = wait_ids(b.ports["imap"], ["after-move@example.net"])
            print("move under load: %d messages sent during the move; imaplib %d flag changes, "
                  "%d reconnect(s); imapflow %d keyword changes, %d reconnect(s)" % (
                      len(sender.accepted), len(flagger.acked), flagger.reconnects,
                      len(fres["acked"]), fres["reconnects"]))

            # ---- 2. back to a, which holds an older copy ----
            p = move(b, "alice@example.org", "--to", "a")
            print("move 2:", p.stdout.strip())
            assert store_of(a, "alice@example.org") == "a"
            assert "target_has account=alice@example.org" in b.read_log() or \
                "target_has account=alice@example.org" in p.stderr, "no delta-only move logged"
            m = re.search(r"records=(\d+)", p.stdout)
            assert m and int(m.group(1)) < 2000, "moving back re-sent everything: %s" % p.stdout
            ids_back, _ = wait_ids(proxy_port, sender.accepted + ["after-move@example.net"])
            assert len(ids_back) == len(set(ids_back))

            # ---- 3. a mover killed half-way resumes ----
            with open(src, "w") as f:
                f.write(mbox(1500, "big", 10))
            a.haven("import", "user0@example.org", "INBOX", src)
            a.set_conf("repl_max_bytes_per_second", "2000000")
            mv = subprocess.Popen([HAVEN, "-c", a.conf, "move", "user0@example.org", "--to", "b"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            state = os.path.join(a.dir, "node", "data", "moves", "user0@example.org.move")
            done = 0
            for _ in range(600):
                if os.path.exists(state):
                    with open(state) as f:
                        st = dict(l.split("=", 1) for l in f.read().splitlines() if "=" in l)
                    done = int(st.get("bytes_done", "0"))
                    # bytes_done: acknowledged as durable by the target
                    if st.get("phase") == "copying" and done > 0:
                        break
                time.sleep(0.05)
            assert mv.poll() is None, "the mover finished before it could be killed: %s%s" % (
                mv.communicate())
            mv.send_signal(signal.SIGKILL)
            mv.wait()
            print("mover killed at %d bytes" % done)
            st_out = a.haven("status").stdout
            assert "moves:" in st_out and "account=user0@example.org" in st_out and \
                "phase=copying" in st_out, st_out
            assert store_of(a, "user0@example.org") == "a"
            a.set_conf("repl_max_bytes_per_second", "0")
            p = move(a, "user0@example.org", "--to", "b")
            print("move 3 (resumed):", p.stdout.strip())
            m = re.search(r"records=(\d+)", p.stdout)
            assert m and int(m.group(1)) < 1501, "the resumed move started over: %s" % p.stdout
            assert store_of(a, "user0@example.org") == "b"
            cb = imap_login(proxy_port, "user0@example.org", "pw-0")
            ids_u0, _ = message_ids(cb)
            cb.logout()
            assert len(ids_u0) == 1500 and len(set(ids_u0)) == 1500, len(ids_u0)

            # ---- 4. a failed move rolls back ----
            a.haven("user", "add", "user9@example.org", "--password-stdin", input="pw-9\n")
            p = move(a, "user9@example.org", "--to", "nosuchstore", check=False)
            assert p.returncode != 0 and "nosuchstore" in p.stderr, p.stdout + p.stderr
            # b's repl address pointing at a dead port: the move fails and
            # leaves user9 active on a.
            dead = free_port()
            a.haven("store", "address", "b", "--repl", "127.0.0.1:%d" % dead)
            p = move(a, "user9@example.org", "--to", "b", check=False)
            assert p.returncode != 0, p.stdout
            assert store_of(a, "user9@example.org") == "a"
            st = a.haven("user", "show", "user9@example.org").stdout
            assert "active" in st, st
            a.haven("store", "address", "b", "--repl", "127.0.0.1:%d" % repl_b)

            # ---- 5. evacuation ----
            p = a.haven("move", "--from", "a", "--to", "b", "--slots", "2", check=False)
            print(p.stdout)
            assert p.returncode == 0, p.stdout + p.stderr + a.read_log()[-3000:]
            for acct in ["alice@example.org", "user1@example.org", "user2@example.org",
                         "user3@example.org", "user9@example.org"]:
                assert store_of(a, acct) == "b", acct
            ev = os.path.join(a.dir, "node", "data", "moves", "evacuate-a-b.state")
            with open(ev) as f:
                st = dict(l.split("=", 1) for l in f.read().splitlines() if "=" in l)
            assert st["accounts_failed"] == "0" and st["accounts_done"] == st["accounts_total"], st
            print(a.haven("move", "--status").stdout)
    print("PASS")


if __name__ == "__main__":
    main()
