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


class Supervision(unittest.TestCase):
    def test_dead_imap_service_is_restarted(self):
        with Instance(keep=os.environ.get("KEEP") == "1") as node:
            node.add_user("sup@example.org", "pw-sup")
            node.start()
            c = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=10)
            c.login("sup@example.org", "pw-sup")
            c.logout()
            for sig in (signal.SIGKILL, signal.SIGSEGV):
                (old,) = children(node.proc.pid)
                os.kill(old, sig)
                served = False
                for _ in range(200):
                    time.sleep(0.1)
                    kids = children(node.proc.pid)
                    if not kids or kids[0] == old:
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
            self.assertIn("service=imap pid=", node.read_log())
            self.assertIn("restart_in_ms=", node.read_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
