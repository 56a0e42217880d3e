#!/usr/bin/env python3
"""The http service: /health, /metrics, the limits on what it reads.

One node:
  1. /health says ok once the services answer; HEAD gives the same status
     without a body;
  2. a mail is delivered; /metrics parses as Prometheus text (a strict
     reader below: HELP/TYPE before samples, each family in one piece, no
     series twice, valid names, labels and values), counts the message the
     queue took and the account; every family of every scrape in this test
     is described in docs/http.md;
  3. mail for a held account shows as held (by the account) in the queue
     metrics, and leaves them once the account is active again;
  4. DATA/moves/: a move, an evacuation and a malformed file give their
     gauges and a skipped count;
  5. 404, 405, and requests over the limits (a 9 KiB head: 431; a 2 KiB
     target: 414) are refused, and the service still answers after them;
  6. a service that stops answering (lmtp, stopped with SIGSTOP) makes
     /health 503 with its name, and it is ok again once it answers.
A primary and a replica (replication throttled so that an account stays
behind for a while): the primary's metrics show the link and the lagging
account; the replica's show its link to the primary.
Waits poll with a bound on tries; nothing asserts how long anything takes.
"""
import http.client
import math
import os
import re
import signal
import smtplib
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "0123456789abcdef0123456789abcdef\n"
with open(os.path.join(ROOT, "docs", "http.md")) as _f:
    DOC = _f.read()

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)(?: -?\d+)?$" % (NAME, LABEL, LABEL))


def parse_prometheus(text):
    """Parses text format 0.0.4 strictly; returns ({(name, labels): value},
    {family: type}). Raises AssertionError on anything malformed."""
    assert text.endswith("\n"), "does not end with a newline"
    samples, types, helps, done = {}, {}, set(), set()
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d %r" % (n, line)
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.*)$" % NAME, line)
            if not m:
                assert not line.startswith("# HELP") and not line.startswith("# TYPE"), where
                continue
            kind, fam, rest = m.groups()
            assert fam not in done, "%s: family %s appears again" % (where, fam)
            if current != fam:
                if current:
                    done.add(current)
                current = fam
            if kind == "TYPE":
                assert fam not in types, "%s: second TYPE" % where
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), where
                assert not any(k[0] == fam for k in samples), "%s: TYPE after samples" % where
                types[fam] = rest
            else:
                assert fam not in helps, "%s: second HELP" % where
                helps.add(fam)
            continue
        assert line.strip(), "%s: empty line" % where
        m = SAMPLE.match(line)
        assert m, "%s: not a sample" % where
        name, labels, value = m.group(1), m.group(2), m.group(m.lastindex)
        fam = name
        for suffix in ("_sum", "_count", "_bucket"):
            if name.endswith(suffix) and name[:-len(suffix)] in types:
                fam = name[:-len(suffix)]
        assert fam == current, "%s: sample outside its family (%s)" % (where, current)
        assert fam in types, "%s: sample before its TYPE" % where
        pairs = tuple(sorted(re.findall(LABEL, labels or "")))
        assert len(set(k for k, _ in pairs)) == len(pairs), "%s: label twice" % where
        key = (name, pairs)
        assert key not in samples, "%s: series twice" % where
        if value in ("NaN", "+Inf", "-Inf"):
            v = float(value.replace("Inf", "inf"))
        else:
            v = float(value)  # raises on garbage
        samples[key] = v
    return samples, types


def get(samples, name, **labels):
    """The value of the series name{labels...} (a subset of its labels
    must match and exactly one series may), or None."""
    found = [v for (n, ls), v in samples.items()
             if n == name and all((k, str(val)) in ls for k, val in labels.items())]
    assert len(found) <= 1, "%s %r matches %d series" % (name, labels, len(found))
    return found[0] if found else None


class Http:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def metrics(self):
        """(samples, types) of a scrape, checked: it parses, and every
        family in it is described in docs/http.md."""
        st, hdr, body = self.request("GET", "/metrics")
        assert st == 200, (st, body)
        assert hdr["Content-Type"].startswith("text/plain; version=0.0.4"), hdr
        samples, types = parse_prometheus(body.decode())
        for fam in types:
            assert "`%s`" % fam in DOC, "docs/http.md does not describe " + fam
        return samples, types

    def raw(self, data, half_close=False):
        """Sends raw bytes (then shuts the sending side when half_close),
        returns everything until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    return out
                out += d

    def wait(self, what, cond, tries=300):
        last = None
        for _ in range(tries):
            last = self.metrics()[0]
            if cond(last):
                return last
            time.sleep(0.1)
        raise AssertionError("%s never came; last metrics:\n%s" % (
            what, "\n".join("%s %s %s" % (n, dict(l), v) for (n, l), v in sorted(last.items())
                            if n.startswith(("haven_queue", "haven_repl", "haven_move")))))


def wait_health(h, want=200, tries=300):
    st, body = None, b""
    for _ in range(tries):
        st, _, body = h.request("GET", "/health")
        if st == want:
            return body
        time.sleep(0.1)
    raise AssertionError("/health stayed %s: %s" % (st, body.decode(errors="replace")))


def send(node, rcpt, subject):
    with smtplib.SMTP("127.0.0.1", node.ports["smtp"], local_hostname="client.test",
                      timeout=60) as s:
        msg = ("From: <sender@example.net>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nbody\r\n"
               % (rcpt, subject))
        assert s.sendmail("sender@example.net", [rcpt], msg) == {}


def service_pid(node, name):
    out = node.haven("status").stdout
    m = re.search(r"^service %s: running pid=(\d+)$" % name, out, re.M)
    assert m, out
    return int(m.group(1))


class HttpService(unittest.TestCase):
    def test_one_node(self):
        with Instance() as node:
            node.add_user("alice@example.org", "pw-alice")
            node.add_user("held@example.org", "pw-held")
            node.start()
            node.wait_smtp()
            h = Http(node.ports["http"])

            # 1. health, HEAD
            self.assertEqual(wait_health(h), b"ok\n")
            st, hdr, body = h.request("HEAD", "/health")
            self.assertEqual((st, body, hdr["Content-Length"]), (200, b"", "3"))

            # 2. a delivery, then the metrics
            send(node, "alice@example.org", "one")
            self.assertEqual(node.wait_count("alice@example.org", "pw-alice", 1), 1)
            samples, types = h.metrics()
            for src in ("master", "queue", "moves"):
                self.assertEqual(get(samples, "haven_metrics_source_up", source=src), 1, src)
            self.assertEqual(get(samples, "haven_accounts"), 2)
            self.assertGreaterEqual(get(samples, "haven_queue_submitted_total"), 1)
            self.assertEqual(get(samples, "haven_queue_accepting"), 1)
            for state in ("ready", "deferred", "held", "delivering", "delivered", "bounced"):
                self.assertIsNotNone(get(samples, "haven_queue_recipients", state=state), state)
            for svc in ("imap", "smtp", "lmtp", "http"):
                self.assertEqual(get(samples, "haven_service_up", service=svc), 1, svc)
            self.assertIsNone(get(samples, "haven_service_up", service="proxy"))  # not run here
            self.assertGreater(get(samples, "haven_uptime_seconds"), 0)
            self.assertGreater(get(samples, "haven_tls_certificate_expiry_timestamp_seconds"),
                               time.time())
            self.assertEqual(types["haven_queue_submitted_total"], "counter")
            print("PASS metrics: %d series in %d families" % (len(samples), len(types)))

            # 3. held mail shows as held, by the account, and leaves
            node.haven("user", "state", "held@example.org", "held")
            send(node, "held@example.org", "held one")
            s = h.wait("a held recipient", lambda s: get(
                s, "haven_queue_held_recipients", reason="account") == 1)
            self.assertEqual(get(s, "haven_queue_recipients", state="held"), 1)
            self.assertEqual(get(s, "haven_queue_messages_with_state", state="held"), 1)
            self.assertEqual(get(s, "haven_queue_messages"), 1)
            self.assertGreater(get(s, "haven_queue_message_bytes"), 0)
            node.haven("user", "state", "held@example.org", "active")
            s = h.wait("the held mail delivered", lambda s: get(s, "haven_queue_messages") == 0)
            self.assertEqual(get(s, "haven_queue_held_recipients", reason="account"), 0)
            self.assertEqual(node.wait_count("held@example.org", "pw-held", 1), 1)
            print("PASS held mail counted, then released")

            # 4. moves
            moves = os.path.join(node.dir, "node", "data", "moves")
            os.makedirs(moves, exist_ok=True)
            files = {
                "bob@example.org.move": "account=bob@example.org\nfrom=s1\nto=s2\n"
                                        "phase=copying\nbytes_total=4000\nbytes_done=1000\n"
                                        "started=1700000000\nupdated=1700000100\nreason=\n"
                                        "some_future_key=x\n",
                "carol@example.org.move": "account=carol@example.org\nphase=copying\n"
                                          "bytes_done=lots\n",
                "evacuate-s1-s2.state": "from=s1\nto=s2\nslots=4\naccounts_total=10\n"
                                        "accounts_done=3\naccounts_failed=1\neta_s=600\n",
            }
            for name, text in files.items():
                with open(os.path.join(moves, name), "w") as f:
                    f.write(text)
            s, _ = h.metrics()
            self.assertEqual(get(s, "haven_move_phase", account="bob@example.org", **{
                "from": "s1", "to": "s2", "phase": "copying"}), 1)
            self.assertEqual(get(s, "haven_move_copied_bytes", account="bob@example.org"), 1000)
            self.assertEqual(get(s, "haven_move_size_bytes", account="bob@example.org"), 4000)
            self.assertIsNone(get(s, "haven_move_phase", account="carol@example.org"))
            self.assertEqual(get(s, "haven_moves", phase="copying"), 1)
            self.assertEqual(get(s, "haven_moves", phase="failed"), 0)
            self.assertEqual(get(s, "haven_move_files_skipped"), 1)
            self.assertEqual(get(s, "haven_evacuation_accounts", state="done"), 3)
            self.assertEqual(get(s, "haven_evacuation_eta_seconds"), 600)
            print("PASS moves")

            # 5. refusals, and the service still answers after them
            st, _, body = h.request("GET", "/nope")
            self.assertEqual(st, 404)
            st, hdr, _ = h.request("POST", "/metrics", body=b"", headers={"Content-Length": "0"})
            self.assertEqual((st, hdr.get("Allow")), (405, "GET, HEAD"))
            long_head = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 9000 +
                         b"\r\n\r\n")
            out = h.raw(long_head)
            self.assertTrue(out.startswith(b"HTTP/1.1 431 "), out[:200])
            self.assertNotIn(b"haven_", out)
            out = h.raw(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 414 "), out[:200])
            out = h.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out[:200])
            # keep-alive and pipelining: two answers on one connection, in order
            out = h.raw(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertRegex(out, rb"(?s)^HTTP/1.1 404 .*HTTP/1.1 200 OK\r\n.*\r\n\r\nok\n$")
            # a client that half-closes after its request still gets the answer
            out = h.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
            self.assertRegex(out, rb"(?s)^HTTP/1.1 200 OK\r\n.*\r\n\r\nok\n$")
            self.assertEqual(wait_health(h), b"ok\n")
            print("PASS refusals")

            # 6. a service that does not answer makes /health 503
            pid = service_pid(node, "lmtp")
            os.kill(pid, signal.SIGSTOP)
            try:
                st, _, body = h.request("GET", "/health")
            finally:
                os.kill(pid, signal.SIGCONT)
            self.assertEqual(st, 503, body)
            self.assertRegex(body.decode(), r"^unavailable\nlmtp: .+\n$")
            self.assertEqual(wait_health(h), b"ok\n")
            print("PASS health 503 while lmtp does not answer:", body.decode().split("\n")[1])

    def test_replication_lag(self):
        port = free_port()
        with Instance() as pri, Instance() as rep:
            for node in (pri, rep):
                path = os.path.join(node.dir, "node", "repl.secret")
                with open(path, "w") as f:
                    f.write(SECRET)
                os.chmod(path, 0o600)
                node.set_conf("repl_secret_file", "repl.secret")
            pri.set_conf("repl_port", str(port))
            # Slow enough that the account below stays behind for a while.
            pri.set_conf("repl_max_bytes_per_second", "20000")
            rep.set_conf("repl_primary", "127.0.0.1:%d" % port)
            pri.add_user("alice@example.org", "pw-alice")
            src = os.path.join(pri.dir, "in.mbox")
            with open(src, "w") as f:
                for i in range(20):  # 20 x 100 KB: blobs, about 100 s at that rate
                    f.write("From a@example.net Mon Jan  1 00:00:00 2024\nFrom: a@example.net\n"
                            "Subject: %d\n\n%s\n" % (i, ("y" * 99 + "\n") * 1000))
            pri.haven("import", "alice@example.org", "INBOX", src)
            pri.start()
            pri.wait_port(port)
            rep.start()
            hp, hr = Http(pri.ports["http"]), Http(rep.ports["http"])
            s = hp.wait("the account behind on the replica", lambda s: (get(
                s, "haven_repl_account_records_behind", account="alice@example.org") or 0) > 0)
            self.assertEqual(get(s, "haven_metrics_source_up", source="repl"), 1)
            self.assertEqual(get(s, "haven_repl_role", role="primary"), 1)
            self.assertEqual(get(s, "haven_repl_link_up"), 1)
            self.assertGreater(get(s, "haven_repl_link_records_behind"), 0)
            self.assertIsNotNone(get(s, "haven_repl_link_max_lag_seconds"))
            self.assertIsNotNone(get(s, "haven_repl_account_lag_seconds",
                                     account="alice@example.org"))
            self.assertEqual(get(s, "haven_repl_link_accounts", state="in_sync"), 0)
            self.assertEqual(get(s, "haven_repl_sync_mode", mode="async"), 1)
            lag = get(s, "haven_repl_account_lag_seconds", account="alice@example.org")
            self.assertTrue(lag >= 0 and not math.isnan(lag), lag)
            print("PASS primary: alice %d records behind, lag %.1f s, link lag %.1f s" % (
                get(s, "haven_repl_account_records_behind", account="alice@example.org"), lag,
                get(s, "haven_repl_link_max_lag_seconds")))
            r = hr.wait("the replica's link up",
                        lambda s: get(s, "haven_repl_replica_link_up") == 1)
            self.assertEqual(get(r, "haven_repl_role", role="replica"), 1)
            self.assertGreater(get(r, "haven_repl_replica_received_bytes_total"), 0)
            self.assertEqual(get(r, "haven_metrics_source_up", source="repl"), 1)
            self.assertEqual(wait_health(hr), b"ok\n")
            print("PASS replica: link up, %d bytes received" %
                  get(r, "haven_repl_replica_received_bytes_total"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
