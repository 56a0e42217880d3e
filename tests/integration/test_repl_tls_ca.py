#!/usr/bin/env python3
"""Replication with certificates as well as the shared secret (repl_tls_ca):
a replica whose certificate the CA signed replicates; one with the same
secret but a self-signed certificate is refused by the primary."""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from haven_instance import Instance, free_port  # noqa: E402

SECRET = "ca-test-secret-0123456789abcdef\n"


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=repl-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)


def sign(d, name):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
            "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", name + ".pem", cwd=d)
    return os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")


def setup(inst, key, value, ca, cert=None):
    path = os.path.join(inst.dir, "node", "repl.secret")
    with open(path, "w") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    inst.set_conf("repl_secret_file", "repl.secret")
    inst.set_conf(key, value)
    inst.set_conf("repl_tls_ca", ca)
    if cert:
        inst.set_conf("tls_cert", cert[0])
        inst.set_conf("tls_key", cert[1])


def main():
    port = free_port()
    with Instance() as pri, Instance() as rep, Instance() as rogue:
        d = pri.dir
        make_ca(d)
        ca = os.path.join(d, "ca.pem")
        setup(pri, "repl_port", str(port), ca, sign(d, "primary"))
        setup(rep, "repl_primary", "127.0.0.1:%d" % port, ca, sign(d, "replica"))
        setup(rogue, "repl_primary", "127.0.0.1:%d" % port, ca)  # haven init's self-signed cert
        pri.add_user("dave@example.org", "pw")
        mbox = os.path.join(d, "m.mbox")
        with open(mbox, "w") as f:
            for i in range(50):
                f.write("From x@y Mon Jan  1 00:00:00 2024\nSubject: %d\n\nbody %d\n\n" % (i, i))
        pri.haven("import", "dave@example.org", "INBOX", mbox)
        pri.start()
        pri.wait_port(port)
        rogue.start()
        rep.start()
        p = None
        for _ in range(200):
            p = pri.haven("replcheck", check=False)
            if p.returncode == 0:
                break
            time.sleep(0.2)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "replicas=1 " in p.stdout, p.stdout  # only the signed one got in
        print("PASS replica with a CA-signed certificate:", p.stdout.strip().splitlines()[-1])
        log = ""
        for _ in range(100):
            log = pri.read_log() + rogue.read_log()
            if "certificate" in log:
                break
            time.sleep(0.1)
        assert "certificate" in log, log
        assert not os.path.exists(os.path.join(rogue.dir, "node", "data", "accounts",
                                               "example.org", "dave")), "rogue got an account"
        print("PASS replica with a self-signed certificate refused")
    print("PASS test_repl_tls_ca")


if __name__ == "__main__":
    main()
