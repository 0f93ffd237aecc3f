"""Throwaway PostgreSQL clusters for failover tests and benchmarks: a primary and a streaming
standby made from stock binaries (`initdb`, `pg_basebackup -R`, `pg_ctl`) in a temp folder.

Everything lives in one directory (data, logs, unix sockets) on free TCP ports of 127.0.0.1,
so it never meets the machine's own cluster. PostgreSQL refuses to run as root: when the
caller is root, the binaries run as the `postgres` OS user (`runuser`) in a directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
from support import free_port, wait_until

STANDBY_NAME = "standby"  # the standby's cluster_name, hence its application_name upstream
OS_USER = "postgres"


def bindir() -> Path | None:
    """The newest `/usr/lib/postgresql/*/bin` that has the tools, or None."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin")
             if all((p / tool).exists() for tool in ("initdb", "pg_ctl", "pg_basebackup"))]
    return max(found, key=lambda p: int(p.parent.name), default=None) if found else None


def unavailable() -> str | None:
    """Why throwaway clusters cannot be made here, or None when they can."""
    if bindir() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or _uid(OS_USER) is None):
        return f"running as root without runuser or a {OS_USER!r} OS user to run PostgreSQL as"
    return None


def workdir() -> Path:
    """A new temp folder the clusters' OS user owns (remove it with shutil.rmtree)."""
    base = Path(tempfile.mkdtemp(prefix="lq-pg-"))
    ids = _uid(OS_USER) if os.geteuid() == 0 else None
    if ids:
        os.chown(base, *ids)
    return base


def _uid(user: str) -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


class Node:
    """One PostgreSQL cluster (a data directory and its postmaster)."""

    def __init__(self, base: Path, name: str) -> None:
        self.base = base
        self.name = name
        self.data = base / name
        self.log = base / f"{name}.log"
        self.port = free_port()
        self._children: list[int] = []
        self._frozen: list[int] = []

    # --- running the tools ---------------------------------------------------------------------
    def run(self, tool: str, *args: str, timeout: float = 60) -> str:
        as_user = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        argv = [*as_user, str(bindir() / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.base)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"log: {self.log_tail()}")
        return done.stdout

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(none)"

    def init(self, **settings: Any) -> None:
        """initdb a fresh cluster (trust auth, user postgres) with ``settings`` on top of
        those every node here has: TCP on 127.0.0.1 at its port, sockets in the folder."""
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--no-instructions", "--no-sync")
        self.configure(listen_addresses="127.0.0.1", port=self.port,
                       unix_socket_directories=str(self.base), max_connections=120,
                       shared_buffers="64MB", **settings)

    def configure(self, **settings: Any) -> None:
        """Append settings to postgresql.conf (the last line for a name wins)."""
        lines = [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
                 for key, value in settings.items()]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop at once if running (teardown: nothing to keep), then end stray children."""
        self.thaw()
        if (self.data / "postmaster.pid").exists() and self._alive(self.postmaster_pid()):
            try:
                self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                os.kill(self.postmaster_pid(), signal.SIGKILL)
        for pid in self._children:
            if self._alive(pid):
                os.kill(pid, signal.SIGKILL)

    def promote(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def kill(self) -> None:
        """kill -9 the postmaster, as a crashed host would leave it. Its children notice the
        postmaster's death and exit (closing their connections); they are remembered so
        teardown can end any that lingers."""
        pid = self.postmaster_pid()
        self._children = [child for child in _pids() if _ppid(child) == pid]
        os.kill(pid, signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and all its children: a server that stops answering but
        whose connections stay open, as with a stalled disk, a paused VM, or (until TCP gives
        up) a network partition."""
        pid = self.postmaster_pid()
        self._frozen = [pid, *(child for child in _pids() if _ppid(child) == pid)]
        for frozen in self._frozen:
            os.kill(frozen, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return False
        return argv0.startswith(b"postgres") or argv0.endswith(b"/postgres")

    # --- SQL -------------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres") -> Any:
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=dbname, connect_timeout=5)
        conn.autocommit = True
        return conn

    def sql(self, query: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


class Pair:
    """A primary and a streaming standby of it; synchronous when ``synchronous``.

    ``url``: libpq's multi-host URL of database ``lq`` on both, primary first, asking for the
    read-write one.
    """

    def __init__(self, synchronous: bool = True, dbname: str = "lq") -> None:
        self.base = workdir()
        self.primary = Node(self.base, "primary")
        self.standby = Node(self.base, "standby")
        self.synchronous = synchronous
        self.dbname = dbname
        self.url = (f"postgresql://postgres@127.0.0.1:{self.primary.port},"
                    f"127.0.0.1:{self.standby.port}/{dbname}?target_session_attrs=read-write")

    def start(self) -> Pair:
        primary, standby = self.primary, self.standby
        primary.init(wal_level="replica", max_wal_senders=4, hot_standby="on",
                     synchronous_commit="on", cluster_name="primary",
                     synchronous_standby_names=STANDBY_NAME if self.synchronous else "")
        primary.start()
        standby.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                    "postgres", "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast")
        # The copy keeps the primary's synchronous_standby_names, as a real standby would.
        standby.configure(port=standby.port, cluster_name=STANDBY_NAME)
        standby.start()
        wanted = "sync" if self.synchronous else "async"
        wait_until(lambda: self.replication_state() == wanted, timeout=30,
                   message=f"the standby streaming as {wanted}")
        primary.sql(f'CREATE DATABASE "{self.dbname}"')
        return self

    def replication_state(self) -> str | None:
        rows = self.primary.sql("SELECT sync_state FROM pg_stat_replication "
                                "WHERE application_name = %s", (STANDBY_NAME,))
        return rows[0][0] if rows else None

    def set_synchronous(self, node: Node, names: str) -> None:
        """Set synchronous_standby_names on ``node`` now (ALTER SYSTEM and a reload): empty
        releases commits waiting for a standby that will not come."""
        conn = node.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (names,))
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        wait_until(lambda: node.sql("SHOW synchronous_standby_names")[0][0] == names,
                   timeout=10, message="the reload")

    def promote_standby(self) -> float:
        """Promote the standby and clear the synchronous_standby_names it inherited (else
        every commit on it waits for a standby it does not have). Returns the moment the
        promotion was done (time.monotonic())."""
        self.standby.promote()
        promoted = time.monotonic()
        self.set_synchronous(self.standby, "")
        return promoted

    def close(self) -> None:
        for node in (self.standby, self.primary):
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                node.stop()  # teardown: stop what can be stopped
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Pair:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
