#!/usr/bin/env python3
"""smtp_bench.py - the measuring half of bench/smtp/run.sh.

Haven and Postfix are measured with the same tools and the same arguments;
only the place where delivered mail is watched differs:

  maildir:DIR                 a Maildir (Postfix's virtual delivery agent):
                              inotify on DIR/new, every file that appears
                              there is a delivered message
  imap:PORT:USER:PASSWORD     an account's INBOX on an IMAP server (Haven):
                              STATUS polls for counting, IDLE (EXISTS) for
                              per-message arrival times

Sub-commands:

  throughput --watch W [--watch W2...] --count N [--label L] [--timeout S] -- COMMAND...
      Starts COMMAND (smtp-source), and measures from just before its start
      until N more messages than at the start are in the mailbox. Prints the
      time COMMAND took (intake) and the time until the last message was in
      the mailbox (end to end), and messages per second for both.

  latency --watch W --rcpt ADDR [--watch W2 --rcpt ADDR2...] --port P
          --rate R --secs T [--size B] [--sessions K] [--label L]
      A paced sender: one message every 1/R s over K connections (EHLO once
      per connection, MAIL/RCPT/DATA pipelined when offered). For every
      message it records when the 250 after the data came, and when the
      message appeared in the mailbox; prints percentiles of the difference.
      With several recipients, messages go to each in turn.

  count --watch W   prints how many messages the mailbox holds
  port              prints a free loopback TCP port

Every figure is printed as a human line followed by a machine line
"RESULT\\t..." that run.sh collects. Nothing here asserts a figure: a
protocol surprise (a refused message) is counted and makes the exit status
non-zero, because then the two servers did not do the same work.
"""
import argparse
import ctypes
import ctypes.util
import imaplib
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import time

now = time.monotonic

# ---------------------------------------------------------------- inotify

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


class MaildirWatch:
    """Every file that appears in DIR/new (created or moved there) is one
    delivered message. inotify, so watching costs nothing while idle."""

    def __init__(self, path):
        self.new = os.path.join(path, "new")
        os.makedirs(self.new, exist_ok=True)
        for sub in ("cur", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = _libc.inotify_add_watch(self.fd, self.new.encode(), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch " + self.new)
        self.seen = set(os.listdir(self.new))
        self.count = len(self.seen)
        self.base = self.count
        self.arrivals = []  # (time, file name) in order of arrival
        self.overflowed = False

    def fileno(self):
        return self.fd

    def on_readable(self):
        t = now()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            off = 0
            while off < len(data):
                _wd, mask, _cookie, ln = struct.unpack_from("iIII", data, off)
                name = data[off + 16:off + 16 + ln].rstrip(b"\0").decode()
                off += 16 + ln
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    continue
                if name and name not in self.seen:
                    self.seen.add(name)
                    self.count += 1
                    self.arrivals.append((t, name))

    def rescan(self):
        """After an inotify queue overflow: count what is there now."""
        for name in os.listdir(self.new):
            if name not in self.seen:
                self.seen.add(name)
                self.count += 1
                self.arrivals.append((now(), name))
        self.overflowed = False

    def pump(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        if sel.select(timeout):
            self.on_readable()
        sel.close()
        if self.overflowed:
            self.rescan()

    def subjects(self, arrivals):
        """file name -> Subject header value"""
        out = {}
        for _t, name in arrivals:
            path = os.path.join(self.new, name)
            if not os.path.exists(path):
                path = os.path.join(os.path.dirname(self.new), "cur", name)
            with open(path, "rb") as f:
                out[name] = header_value(f.read(8192), b"subject")
        return out

    def close(self):
        os.close(self.fd)


def header_value(raw, name):
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = re.search(rb"(?im)^" + re.escape(name) + rb":[ \t]*(.*?)\r?$", head)
    return m.group(1).decode(errors="replace") if m else None


class ImapWatch:
    """An account's INBOX: counted by STATUS polls (throughput) or followed
    with IDLE (latency: every EXISTS is an arrival time for the messages
    it announces)."""

    def __init__(self, port, user, password):
        self.port, self.user, self.password = int(port), user, password
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        c.login(user, password)
        self.poller = c
        self.count = self.status()
        self.base = self.count
        self.arrivals = []  # (time, sequence number)
        self.idle_sock = None

    def status(self):
        typ, data = self.poller.status("INBOX", "(MESSAGES)")
        if typ != "OK":
            raise RuntimeError("STATUS INBOX: %s %r" % (typ, data))
        m = re.search(rb"MESSAGES (\d+)", data[0])
        return int(m.group(1))

    def pump(self, timeout):
        """Throughput mode: one STATUS per call (callers sleep in between)."""
        time.sleep(timeout)
        n = self.status()
        if n > self.count:
            t = now()
            for seq in range(self.count + 1, n + 1):
                self.arrivals.append((t, seq))
            self.count = n

    # --- IDLE, driven by the latency loop's selector ---
    def start_idle(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.idle_sock = s
        self.buf = b""
        self._expect(s, None)
        self._cmd(s, b"a1 LOGIN " + imap_quote(self.user) + b" " + imap_quote(self.password))
        self._cmd(s, b"a2 SELECT INBOX")
        s.sendall(b"a3 IDLE\r\n")
        while not self.buf.startswith(b"+"):
            line = self._line(s)
            if line.startswith(b"+"):
                break
            self._exists(line)
        s.setblocking(False)
        self.buf = b""
        self.last_event = now()
        self.noop_pending = False
        self.tag = 3

    def _line(self, s):
        while b"\r\n" not in self.buf:
            d = s.recv(65536)
            if not d:
                raise RuntimeError("IMAP connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _expect(self, s, tag):
        while True:
            line = self._line(s)
            self._exists(line)
            if tag is None:
                return line
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError("IMAP: " + line.decode(errors="replace"))
                return line

    def _cmd(self, s, cmd):
        s.sendall(cmd + b"\r\n")
        return self._expect(s, cmd.split(b" ", 1)[0])

    def _exists(self, line):
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            n = int(m.group(1))
            if n > self.count:
                t = now()
                for seq in range(self.count + 1, n + 1):
                    self.arrivals.append((t, seq))
                self.count = n
                self.last_event = t
            return True
        return False

    def fileno(self):
        return self.idle_sock.fileno()

    def on_readable(self):
        try:
            d = self.idle_sock.recv(65536)
        except BlockingIOError:
            return
        if not d:
            raise RuntimeError("IMAP IDLE connection closed by the server")
        self.buf += d
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            if self._exists(line):
                continue
            if self.noop_pending and re.match(rb"n\d+ ", line):
                # NOOP answered: back to IDLE.
                self.noop_pending = False
                self.idle_sock.sendall(b"i%d IDLE\r\n" % self.tag)
                self.tag += 1

    def nudge(self):
        """A safety net, not the measurement: when nothing was announced for
        a while although messages are expected, leave IDLE, NOOP, re-enter.
        Its use is counted and printed (a server that forgets to notify
        looks slow here, which is what it is to a client)."""
        if self.noop_pending:
            return False
        self.idle_sock.sendall(b"DONE\r\nn%d NOOP\r\n" % self.tag)
        self.tag += 1
        self.noop_pending = True
        return True

    def subjects(self, seqs):
        """sequence number -> Subject, in one FETCH"""
        out = {}
        if not seqs:
            return out
        lo, hi = min(seqs), max(seqs)
        c = self.poller
        c.select("INBOX", readonly=True)
        typ, data = c.fetch("%d:%d" % (lo, hi), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK":
            raise RuntimeError("FETCH: %s" % typ)
        for item in data:
            if isinstance(item, tuple):
                m = re.match(rb"(\d+) ", item[0])
                out[int(m.group(1))] = header_value(item[1], b"subject")
        return out

    def close(self):
        try:
            self.poller.logout()
        except Exception:
            pass
        if self.idle_sock:
            self.idle_sock.close()


def imap_quote(s):
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class MultiWatch:
    """Several mailboxes counted as one (throughput and count only)."""

    def __init__(self, watches):
        self.watches = watches
        self.count = sum(w.count for w in watches)
        self.base = self.count
        self.arrivals = []

    def pump(self, timeout):
        maildirs = [w for w in self.watches if isinstance(w, MaildirWatch)]
        sel = selectors.DefaultSelector()
        for w in maildirs:
            sel.register(w.fd, selectors.EVENT_READ, w)
        imaps = [w for w in self.watches if isinstance(w, ImapWatch)]
        for key, _ev in sel.select(timeout if not imaps else 0):
            key.data.on_readable()
        sel.close()
        if imaps:
            time.sleep(timeout)
        before = self.count
        for w in self.watches:
            if isinstance(w, ImapWatch):
                w.count = w.status()
            elif w.overflowed:
                w.rescan()
        self.count = sum(w.count for w in self.watches)
        if self.count > before:
            t = now()
            self.arrivals.extend((t, None) for _ in range(self.count - before))

    def close(self):
        for w in self.watches:
            w.close()


def open_watch(specs):
    if isinstance(specs, list):
        if len(specs) == 1:
            return open_watch(specs[0])
        return MultiWatch([open_watch(s) for s in specs])
    spec = specs
    kind, _, rest = spec.partition(":")
    if kind == "maildir":
        return MaildirWatch(rest)
    if kind == "imap":
        port, user, password = rest.split(":", 2)
        return ImapWatch(port, user, password)
    raise SystemExit("smtp_bench: --watch must be maildir:DIR or imap:PORT:USER:PASSWORD")


# ---------------------------------------------------------------- throughput

def cmd_throughput(a):
    w = open_watch(a.watch)
    start_count = w.count
    target = start_count + a.count
    t0 = now()
    p = subprocess.Popen(a.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_intake = None
    deadline = t0 + a.timeout
    interval = 0.05
    while True:
        if t_intake is None and p.poll() is not None:
            t_intake = now()
            if p.returncode != 0:
                err = p.stderr.read().decode(errors="replace").strip()
                print("%s: %s exited %d: %s" % (a.label, os.path.basename(a.command[0]),
                                                p.returncode, err[-500:]))
                print("RESULT\tthroughput_error\t%s\t%d" % (a.label, p.returncode))
                return 1
        if w.count >= target and t_intake is not None:
            break
        if now() > deadline:
            print("%s: only %d of %d messages arrived within %d s" % (
                a.label, w.count - start_count, a.count, a.timeout))
            print("RESULT\tthroughput_error\t%s\ttimeout" % a.label)
            if p.poll() is None:
                p.kill()
            return 1
        w.pump(interval)
    # The time the count was first seen at the target: the arrival of the
    # last message (IMAP polling adds at most one interval).
    t_end = max(t for t, _ in w.arrivals[:a.count]) if w.arrivals else now()
    t_end = max(t_end, t_intake)
    w.close()
    intake = t_intake - t0
    e2e = t_end - t0
    print("%-8s %6d msgs of %s B: intake %.2f s (%.0f/s), in the mailbox after %.2f s: %.0f msgs/s"
          % (a.label, a.count, a.size_label, intake, a.count / intake, e2e, a.count / e2e))
    print("RESULT\tthroughput\t%s\t%s\t%d\t%.4f\t%.4f\t%.2f" % (
        a.label, a.size_label, a.count, intake, e2e, a.count / e2e))
    return 0


# ---------------------------------------------------------------- latency

def make_body(size):
    """size bytes of 78-character lines, like smtp-source's payload."""
    lines, total, i = [], 0, 0
    while total < size:
        line = ("%d" % (i % 10)) + "X" * 77
        lines.append(line)
        total += len(line) + 2
        i += 1
    return "\r\n".join(lines) + "\r\n"


class SmtpConn:
    def __init__(self, bench, idx):
        self.bench, self.idx = bench, idx
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", bench.port))
        except BlockingIOError:
            pass
        self.sock = s
        self.rbuf = b""
        self.wbuf = b""
        self.lines = []
        self.expect = ["greeting"]  # what the next replies answer
        self.ready = False
        self.pipelining = False
        self.msg = None
        self.pending_data = None

    def fileno(self):
        return self.sock.fileno()

    def send(self, data):
        self.wbuf += data
        self.flush()

    def flush(self):
        while self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except BlockingIOError:
                break
            self.wbuf = self.wbuf[n:]
        self.bench.want_write(self, bool(self.wbuf))

    def start(self, i):
        b = self.bench
        self.msg = i
        self.ready = False
        env = [b"MAIL FROM:<%s>" % b.sender.encode(), b"RCPT TO:<%s>" % b.rcpt_of(i).encode(),
               b"DATA"]
        self.pending_data = b.message(i)
        if self.pipelining:
            self.expect = ["mail", "rcpt", "data"]
            self.send(b"".join(c + b"\r\n" for c in env))
        else:
            self.queue_cmds = env[1:]
            self.expect = ["mail"]
            self.send(env[0] + b"\r\n")

    def on_readable(self):
        try:
            d = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionError as e:
            raise RuntimeError("SMTP connection %d: %s" % (self.idx, e))
        if not d:
            raise RuntimeError("SMTP connection %d closed by the server (expecting %s)"
                               % (self.idx, self.expect))
        self.rbuf += d
        while b"\r\n" in self.rbuf:
            line, self.rbuf = self.rbuf.split(b"\r\n", 1)
            self.lines.append(line)
            if len(line) >= 4 and line[3:4] == b"-":
                continue
            reply, self.lines = self.lines, []
            self.on_reply(int(reply[-1][:3]), reply)

    def on_reply(self, code, reply):
        what = self.expect.pop(0)
        b = self.bench
        if what == "greeting":
            if code != 220:
                raise RuntimeError("greeting: %r" % reply)
            self.expect = ["ehlo"]
            self.send(b"EHLO client.test\r\n")
        elif what == "ehlo":
            if code != 250:
                raise RuntimeError("EHLO: %r" % reply)
            self.pipelining = any(l[4:].upper().startswith(b"PIPELINING") for l in reply)
            self.ready = True
            b.conn_ready(self)
        elif what in ("mail", "rcpt"):
            if code // 100 != 2:
                b.refused(self, what, reply)
            elif not self.pipelining:
                self.expect = [("rcpt", "data")[what == "rcpt"]]
                self.send(self.queue_cmds.pop(0) + b"\r\n")
        elif what == "data":
            if code != 354:
                b.refused(self, what, reply)
                return
            self.expect = ["dot"]
            self.send(self.pending_data)
        elif what == "dot":
            t = now()
            if code != 250:
                b.refused(self, what, reply)
            else:
                b.accepted(self.msg, t)
            self.msg = None
            self.ready = True
            b.conn_ready(self)
        elif what == "rset":
            self.ready = True
            b.conn_ready(self)


class LatencyBench:
    def __init__(self, a, watches):
        self.a = a
        self.port = a.port
        self.sender = a.sender
        self.rcpts = a.rcpt
        self.watches = watches
        self.body = make_body(a.size).encode()
        self.run_id = "%x%x" % (os.getpid(), int(time.time()))
        self.sel = selectors.DefaultSelector()
        self.idle = []
        self.backlog = []
        self.t250 = {}
        self.scheduled = {}
        self.errors = 0
        self.max_backlog = 0

    def message(self, i):
        head = ("From: <%s>\r\nTo: <%s>\r\nSubject: lat %s %d\r\nMessage-ID: <lat.%s.%d@client.test>\r\n"
                "Date: %s\r\n\r\n" % (self.sender, self.rcpt_of(i), self.run_id, i, self.run_id, i,
                                      time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())))
        return head.encode() + self.body + b".\r\n"

    def rcpt_of(self, i):
        """Message i goes to the recipients in turn (one watch each)."""
        return self.rcpts[i % len(self.rcpts)]

    def want_write(self, conn, on):
        ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(conn.sock, ev, conn)

    def conn_ready(self, conn):
        if self.backlog:
            conn.start(self.backlog.pop(0))
        else:
            self.idle.append(conn)

    def accepted(self, i, t):
        self.t250[i] = t

    def refused(self, conn, what, reply):
        self.errors += 1
        if self.errors <= 5:
            print("%s: message %s refused at %s: %s" % (
                self.a.label, conn.msg, what, b" / ".join(reply).decode(errors="replace")))
        conn.expect = ["rset"]
        conn.send(b"RSET\r\n")

    def run(self):
        a = self.a
        conns = [SmtpConn(self, k) for k in range(a.sessions)]
        for c in conns:
            self.sel.register(c.sock, selectors.EVENT_READ, c)
        for w in self.watches:
            self.sel.register(w.fileno(), selectors.EVENT_READ, w)
        # Wait until every connection said EHLO.
        t_setup = now() + 30
        while len(self.idle) < len(conns):
            if now() > t_setup:
                raise RuntimeError("SMTP connections not ready after 30 s")
            self.loop_once(0.1)
        total = int(a.rate * a.secs)
        interval = 1.0 / a.rate
        t0 = now() + 0.05
        nudges = 0
        next_i = 0
        end_wait = None
        while True:
            t = now()
            while next_i < total and t0 + next_i * interval <= t:
                self.scheduled[next_i] = t0 + next_i * interval
                if self.idle:
                    self.idle.pop(0).start(next_i)
                else:
                    self.backlog.append(next_i)
                    self.max_backlog = max(self.max_backlog, len(self.backlog))
                next_i += 1
            delivered = sum(w.count - w.base for w in self.watches)
            if next_i >= total and not self.backlog and len(self.idle) == len(conns):
                if end_wait is None:
                    end_wait = now() + a.timeout
                if delivered >= len(self.t250):
                    break
                if now() > end_wait:
                    break
            timeout = 0.2
            if next_i < total:
                timeout = max(0.0, min(timeout, t0 + next_i * interval - now()))
            self.loop_once(timeout)
            for w in self.watches:
                if (len(self.t250) > delivered and isinstance(w, ImapWatch)
                        and now() - w.last_event > 1.0 and w.nudge()):
                    nudges += 1
                    w.last_event = now()
                if isinstance(w, MaildirWatch) and w.overflowed:
                    w.rescan()
        for c in conns:
            try:
                c.sock.setblocking(True)
                c.sock.sendall(b"QUIT\r\n")
            except OSError:
                pass
            c.sock.close()
        return total, nudges

    def loop_once(self, timeout):
        for key, ev in self.sel.select(timeout):
            obj = key.data
            if ev & selectors.EVENT_WRITE and isinstance(obj, SmtpConn):
                obj.flush()
            if ev & selectors.EVENT_READ:
                obj.on_readable()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def cmd_latency(a):
    if len(a.watch) != len(a.rcpt):
        raise SystemExit("smtp_bench latency: one --watch per --rcpt, in the same order")
    watches = [open_watch(spec) for spec in a.watch]
    for w in watches:
        if isinstance(w, ImapWatch):
            w.start_idle()
    b = LatencyBench(a, watches)
    total, nudges = b.run()
    # Map arrivals to message numbers through their Subject.
    pairs = []
    for w in watches:
        if isinstance(w, ImapWatch):
            subj = w.subjects([seq for _t, seq in w.arrivals])
            pairs += [(t, subj.get(seq)) for t, seq in w.arrivals]
        else:
            subj = w.subjects(w.arrivals)
            pairs += [(t, subj.get(name)) for t, name in w.arrivals]
        w.close()
    arrival = {}
    pat = re.compile(r"lat %s (\d+)$" % re.escape(b.run_id))
    for t, s in pairs:
        m = pat.match(s or "")
        if m:
            arrival.setdefault(int(m.group(1)), t)
    lat = sorted((arrival[i] - t250) * 1000.0 for i, t250 in b.t250.items() if i in arrival)
    missing = [i for i in b.t250 if i not in arrival]
    p50, p90, p99 = (percentile(lat, p) for p in (50, 90, 99))
    mx = lat[-1] if lat else float("nan")
    print("%-8s %d msgs of %d B at %.0f/s over %d connections: 250 -> mailbox p50 %.1f ms, "
          "p90 %.1f ms, p99 %.1f ms, max %.1f ms%s%s%s" % (
              a.label, total, a.size, a.rate, a.sessions, p50, p90, p99, mx,
              "; %d refused" % b.errors if b.errors else "",
              "; %d never arrived" % len(missing) if missing else "",
              "; sender fell behind (backlog up to %d)" % b.max_backlog if b.max_backlog > a.sessions else ""))
    if nudges:
        print("%-8s note: IDLE announced nothing for 1 s while messages were due, %d times"
              " (NOOP asked instead)" % (a.label, nudges))
    print("RESULT\tlatency\t%s\t%d\t%.1f\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d\t%d" % (
        a.label, a.size, a.rate, p50, p90, p99, mx, len(lat), b.errors, len(missing)))
    return 1 if (b.errors or missing) else 0


def cmd_count(a):
    w = open_watch(a.watch)
    print(w.count)
    w.close()
    return 0


def cmd_port(_a):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--watch", required=True, action="append",
                   help="a mailbox; several: their counts add up")
    t.add_argument("--count", type=int, required=True)
    t.add_argument("--label", default="server")
    t.add_argument("--size-label", default="?")
    t.add_argument("--timeout", type=int, default=900)
    t.add_argument("command", nargs=argparse.REMAINDER)
    l = sub.add_parser("latency")
    l.add_argument("--watch", required=True, action="append",
                   help="the mailbox of the --rcpt in the same place")
    l.add_argument("--port", type=int, required=True)
    l.add_argument("--rate", type=float, required=True)
    l.add_argument("--secs", type=float, default=10)
    l.add_argument("--size", type=int, default=4096)
    l.add_argument("--sessions", type=int, default=20)
    l.add_argument("--sender", default="lat@client.test")
    l.add_argument("--rcpt", required=True, action="append",
                   help="several: messages go to each in turn")
    l.add_argument("--label", default="server")
    l.add_argument("--timeout", type=int, default=120)
    c = sub.add_parser("count")
    c.add_argument("--watch", required=True, action="append")
    sub.add_parser("port")
    a = ap.parse_args()
    if a.cmd == "throughput":
        if a.command and a.command[0] == "--":
            a.command = a.command[1:]
        if not a.command:
            ap.error("throughput needs a command after --")
        return cmd_throughput(a)
    if a.cmd == "latency":
        return cmd_latency(a)
    if a.cmd == "count":
        return cmd_count(a)
    return cmd_port(a)


if __name__ == "__main__":
    sys.exit(main())
