"""A throw-away Haven node for integration tests.

Creates a folder with `haven init` on free loopback ports, adds accounts,
starts `havend -f` and stops it again. Tests talk to it with real clients
(imaplib, smtplib, curl, ...). Waiting for readiness polls the port; no test
asserts how long anything takes.
"""
import imaplib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# HAVEN_BIN_DIR: take haven and havend from there instead of bin/ (a copy
# that a rebuild in the work tree cannot swap during a long test).
BIN_DIR = os.environ.get("HAVEN_BIN_DIR") or os.path.join(ROOT, "bin")
HAVEN = os.path.join(BIN_DIR, "haven")
HAVEND = os.path.join(BIN_DIR, "havend")


def _group_alive(pgid):
    """Whether a thread of a process of group pgid still runs. Threads
    count: when a killed process's main thread is a zombie already,
    another of its threads may still be finishing (say, an fsync) and hold
    the process's files and locks."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir("/proc/%s/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%s/task/%s/stat" % (pid, tid)) as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:
                break
            if fields[0] not in ("Z", "X"):
                return True
    return False


_handed_out = set()


def free_port():
    """A loopback port nobody listens on now, and that this process has not
    handed out before (the kernel may offer a just-closed port again, and
    two services of one instance on one port fail `haven init`)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class Instance:
    def __init__(self, keep=False):
        base = os.environ.get("TMPDIR") or None
        self.dir = tempfile.mkdtemp(prefix="haven-it-", dir=base)
        self.keep = keep
        self.ports = {k: free_port() for k in ("imap", "imaps", "smtp", "submission",
                                                "submissions", "lmtp", "http")}
        self.conf = os.path.join(self.dir, "node", "haven.conf")
        self.proc = None
        self.run(HAVEN, "init", os.path.join(self.dir, "node"),
                 "--imap-port", str(self.ports["imap"]),
                 "--smtp-port", str(self.ports["smtp"]),
                 "--submission-port", str(self.ports["submission"]),
                 "--lmtp-port", str(self.ports["lmtp"]),
                 "--http-port", str(self.ports["http"]),
                 "--hostname", "localhost")
        self.set_conf("imaps_port", str(self.ports["imaps"]))
        self.set_conf("submissions_port", str(self.ports["submissions"]))

    def set_conf(self, key, value):
        with open(self.conf) as f:
            lines = [l for l in f.read().splitlines()
                     if not l.strip().startswith(key + " ") and not l.strip().startswith(key + "=")]
        lines.append("%s = %s" % (key, value))
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def directory_file(self):
        """The SQLite file of this node's directory (as `haven init` made it)."""
        return os.path.join(self.dir, "node", "directory.sqlite")

    def share_directory(self, other):
        """Points this node at other's SQLite directory: two nodes, one
        directory (give them different `store_name`s). Call before adding
        accounts here, so they go into the shared one."""
        self.set_conf("directory", "sqlite:" + other.directory_file())

    def serve_store(self, store, directory, repl_port, secret="0123456789abcdef0123456789abcdef\n"):
        """Makes this node serve store `store` of a shared directory, with the
        repl service on repl_port and the repl secret every node of the test
        shares (replication and `haven move` need both)."""
        path = os.path.join(self.dir, "node", "repl.secret")
        with open(path, "w") as f:
            f.write(secret)
        os.chmod(path, 0o600)
        self.set_conf("repl_secret_file", "repl.secret")
        self.set_conf("repl_port", str(repl_port))
        self.set_conf("store_name", store)
        self.set_conf("directory", directory)

    def run(self, *args, input=None, check=True):
        p = subprocess.run(list(args), input=input, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (" ".join(args), p.returncode,
                                                          p.stdout, p.stderr))
        return p

    def haven(self, *args, input=None, check=True):
        return self.run(HAVEN, "-c", self.conf, *args, input=input, check=check)

    def add_user(self, address, password):
        self.haven("user", "add", address, "--password-stdin", input=password + "\n")

    def start(self, new_session=False):
        """Starts havend -f. new_session: in a process group of its own, so
        that kill_group() can kill the master and every service at once."""
        self.log = open(os.path.join(self.dir, "havend.log"), "a")
        self.proc = subprocess.Popen([HAVEND, "-c", self.conf, "-f"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=new_session)
        self.wait_port(self.ports["imap"])
        return self

    def wait_smtp(self, tries=600):
        """Waits until the smtp service answers: a 220 greeting on the MX
        port (the master binds the ports before the service runs, so an
        accepted connection alone proves nothing), then the submission
        ports accept connections."""
        for _ in range(tries):
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError("havend exited: " + self.read_log())
            try:
                with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=5) as c:
                    if c.makefile("rb").readline().startswith(b"220"):
                        c.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("smtp service never greeted: " + self.read_log())
        for k in ("submission", "submissions"):
            self.wait_port(self.ports[k])
        return self

    def kill_group(self):
        """SIGKILL to havend's whole process group (master and services,
        as a power cut would stop them); needs start(new_session=True)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        # Every member must be dead before the next start binds the ports
        # again. Zombies (reaped by init at its own pace) hold nothing.
        for _ in range(500):
            if not _group_alive(pgid):
                break
            time.sleep(0.01)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None

    def add_alias(self, address, target):
        self.haven("alias", "add", address, target)

    # --- reading an account's mail back over IMAP (plaintext from loopback) ---
    def imap(self, address, password):
        c = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=30)
        c.login(address, password)
        return c

    def imap_count(self, address, password, mailbox="INBOX"):
        """Messages in mailbox (IMAP STATUS)."""
        c = self.imap(address, password)
        try:
            typ, data = c.status(mailbox, "(MESSAGES)")
            if typ != "OK":
                raise RuntimeError("STATUS %s: %r" % (mailbox, data))
            return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
        finally:
            c.logout()

    def imap_fetch(self, address, password, item="BODY.PEEK[]", mailbox="INBOX"):
        """[(uid, bytes)] of every message in mailbox, in uid order; item
        is any FETCH item that returns a literal (e.g.
        "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]")."""
        c = self.imap(address, password)
        try:
            typ, _ = c.select(mailbox, readonly=True)
            if typ != "OK":
                raise RuntimeError("SELECT %s failed" % mailbox)
            typ, data = c.uid("FETCH", "1:*", "(UID %s)" % item)
            if typ != "OK":
                raise RuntimeError("UID FETCH: %r" % data)
            out = []
            for d in data:
                if isinstance(d, tuple):
                    out.append((int(re.search(rb"UID (\d+)", d[0]).group(1)), d[1]))
            return sorted(out)
        finally:
            c.logout()

    def imap_header(self, address, password, field, mailbox="INBOX"):
        """[(uid, value)] of one header field of every message, in uid
        order (None where the message has no such field)."""
        out = []
        for uid, raw in self.imap_fetch(address, password,
                                        "BODY.PEEK[HEADER.FIELDS (%s)]" % field.upper(),
                                        mailbox):
            m = re.search(rb"(?im)^" + re.escape(field.encode()) + rb":[ \t]*(.*?)\r?$", raw)
            out.append((uid, m.group(1).decode(errors="replace").strip() if m else None))
        return out

    def wait_count(self, address, password, want, timeout=60, mailbox="INBOX"):
        """Polls until mailbox holds at least want messages; returns the
        count seen last (the caller asserts)."""
        deadline = time.time() + timeout
        n = -1
        while time.time() < deadline:
            n = self.imap_count(address, password, mailbox)
            if n >= want:
                return n
            time.sleep(0.2)
        return n

    def wait_port(self, port, tries=300):
        for _ in range(tries):
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError("havend exited: " + self.read_log())
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("port %d never opened: %s" % (port, self.read_log()))

    def read_log(self):
        try:
            with open(os.path.join(self.dir, "havend.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def close(self):
        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            print("havend log:\n" + self.read_log())
            self.keep = True
            print("instance kept in", self.dir)
        self.close()


class ArrivalWatch:
    """Notes when each message arrives in an account's INBOX: an IMAP IDLE
    connection records the time of every EXISTS, and, in case IDLE is late
    or silent, a second connection polls STATUS every 50 ms. arrived(n)
    is the earliest time (time.monotonic()) either saw n or more messages
    since the watch started, counting from its first message (1)."""

    def __init__(self, node, address, password):
        self.node, self.address, self.password = node, address, password
        self.lock = threading.Lock()
        self.first = {}      # count -> earliest monotonic time seen
        self.stop_ev = threading.Event()
        c = node.imap(address, password)
        typ, data = c.select("INBOX")
        if typ != "OK":
            raise RuntimeError("SELECT INBOX of %s: %r" % (address, data))
        self.base = int(data[0])
        self.idle_conn = c
        self.threads = [threading.Thread(target=self._idle, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]
        for t in self.threads:
            t.start()

    def _seen(self, total):
        t = time.monotonic()
        n = total - self.base
        with self.lock:
            for k in range(n, 0, -1):
                if k in self.first:
                    break
                self.first[k] = t

    def _idle(self):
        c = self.idle_conn
        sock = c.socket()
        tag = c._new_tag()
        c.send(tag + b" IDLE\r\n")
        sock.settimeout(0.2)
        buf = b""
        while not self.stop_ev.is_set():
            try:
                d = sock.recv(65536)
            except (TimeoutError, OSError) as e:
                if isinstance(e, TimeoutError) or "timed out" in str(e):
                    continue
                return
            if not d:
                return
            buf += d
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                m = re.match(rb"\* (\d+) EXISTS", line)
                if m:
                    self._seen(int(m.group(1)))
        try:
            sock.settimeout(5)
            c.send(b"DONE\r\n")
            c.logout()
        except Exception:
            pass

    def _poll(self):
        c = self.node.imap(self.address, self.password)
        try:
            while not self.stop_ev.wait(0.05):
                typ, data = c.status("INBOX", "(MESSAGES)")
                if typ == "OK":
                    self._seen(int(re.search(rb"MESSAGES (\d+)", data[0]).group(1)))
        finally:
            try:
                c.logout()
            except Exception:
                pass

    def arrived(self, n):
        with self.lock:
            return self.first.get(n)

    def count(self):
        with self.lock:
            return max(self.first) if self.first else 0

    def close(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)
