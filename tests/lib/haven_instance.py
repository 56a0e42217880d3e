"""A throw-away Haven node for integration tests.

Creates a folder with `haven init` on free loopback ports, adds accounts,
starts `havend -f` and stops it again. Tests talk to it with real clients
(imaplib, smtplib, curl, ...). Waiting for readiness polls the port; no test
asserts how long anything takes.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVEN = os.path.join(ROOT, "bin", "haven")
HAVEND = os.path.join(ROOT, "bin", "havend")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def start(self):
        self.log = open(os.path.join(self.dir, "havend.log"), "w")
        self.proc = subprocess.Popen([HAVEND, "-c", self.conf, "-f"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.wait_port(self.ports["imap"])
        return self

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
