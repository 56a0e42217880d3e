"""A throwaway PostgreSQL server for tests (Debian's postgresql package):
initdb in a temporary folder, a free loopback port, trust authentication
(loopback only, and its socket folder is private), fsync off (nothing here
must survive a crash of the machine). As root the server runs as the
postgres user, since PostgreSQL refuses to run as root.

    with PgServer() as pg:
        pg.createdb("haven")
        conf.set("directory", "pg:" + pg.conninfo("haven"))
"""
import glob
import os
import shutil
import subprocess
import tempfile

from haven_instance import free_port


class PgServer:
    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) if x.isdigit() else x for x in p.split("/")[4].split(".")])
        if not bins or not os.path.exists(os.path.join(bins[-1], "initdb")):
            raise RuntimeError("PostgreSQL server binaries not found (install Debian's "
                               "postgresql: scripts/deps.sh)")
        self.bin = bins[-1]
        self.tmp = tempfile.mkdtemp(prefix="haven-pg-")
        os.chmod(self.tmp, 0o755)
        self.data = os.path.join(self.tmp, "pg")
        os.mkdir(self.data)
        self.as_pg = []
        if os.getuid() == 0:
            self.as_pg = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.data, "postgres", "postgres")
        self.port = free_port()
        self.started = False

    def _run(self, *args):
        p = subprocess.run(self.as_pg + list(args), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (args[0], p.stdout, p.stderr))
        return p

    def start(self):
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "haven",
                  "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                  os.path.join(self.data, "server.log"), "-w", "-t", "60", "-o",
                  "-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s "
                  "-c fsync=off -c max_connections=400" % (self.port, self.data), "start")
        self.started = True
        return self

    def createdb(self, name):
        self._run(os.path.join(self.bin, "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "haven", name)

    def conninfo(self, db):
        return "host=127.0.0.1 port=%d dbname=%s user=haven" % (self.port, db)

    def stop(self):
        if self.started:
            subprocess.run(self.as_pg + [os.path.join(self.bin, "pg_ctl"), "-D", self.data,
                                         "-m", "immediate", "-w", "stop"],
                           capture_output=True)
            self.started = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
