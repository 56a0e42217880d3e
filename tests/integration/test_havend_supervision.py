#!/usr/bin/env python3
"""havend supervises its services: when the imap service dies, the master
restarts it (after a back-off) and clients are served again; the master
itself stays up. Waits with generous limits; asserts no durations."""
import imaplib
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from haven_instance import Instance  # noqa: E402


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def listening_inodes(port):
    """Socket inodes listening on TCP port (state 0A), from /proc/net/tcp*."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(f[9])
    return found


def service_child(pid, port):
    """The child of havend holding the listening socket of port: havend
    runs one child per service, and only the imap one has the imap port."""
    want = listening_inodes(port)
    for kid in children(pid):
        try:
            fds = os.listdir(f"/proc/{kid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{kid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in want:
                return kid
    return None


class Supervision(unittest.TestCase):
    def test_dead_imap_service_is_restarted(self):
        with Instance(keep=os.environ.get("KEEP") == "1") as node:
            node.add_user("sup@example.org", "pw-sup")
            node.start()
            c = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=10)
            c.login("sup@example.org", "pw-sup")
            c.logout()
            smtp_child = service_child(node.proc.pid, node.ports["smtp"])
            self.assertIsNotNone(smtp_child)
            for sig in (signal.SIGKILL, signal.SIGSEGV):
                old = service_child(node.proc.pid, node.ports["imap"])
                self.assertIsNotNone(old)
                os.kill(old, sig)
                served = False
                for _ in range(200):
                    time.sleep(0.1)
                    kid = service_child(node.proc.pid, node.ports["imap"])
                    if kid is None or kid == old:
                        continue
                    try:
                        c = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=2)
                        c.login("sup@example.org", "pw-sup")
                        c.logout()
                        served = True
                        break
                    except (OSError, imaplib.IMAP4.error):
                        pass
                self.assertTrue(served, "imap not served again after signal %d" % sig)
                self.assertIsNone(node.proc.poll(), "the master must stay up")
            # Only the failed unit was restarted: smtp kept its process.
            self.assertEqual(service_child(node.proc.pid, node.ports["smtp"]), smtp_child)
            self.assertIn("service=imap pid=", node.read_log())
            self.assertIn("restart_in_ms=", node.read_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
