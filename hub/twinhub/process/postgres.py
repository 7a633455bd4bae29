"""A private PostgreSQL 15 cluster under one directory (Debian's packages).

Layout under ``base_dir``::

    data/        PGDATA                              owner: the server account, 0700
    run/         unix socket (and server log)        owner: the server account, 0700
    pgpass       libpq password file of the role     owner: the caller, 0600

As root the server runs as the ``postgres`` OS account (``runuser -u postgres --``), as
anyone else it runs as the calling account.  Authentication is never ``trust``: the
server account's superuser connects by ``peer`` over the socket only (to create the role
and databases), the platform role authenticates with a SCRAM-SHA-256 password.  With
``listen="unix"`` there is no TCP listener at all; with ``listen="tcp"`` the server listens
on 127.0.0.1 only.  URLs carry no password: they name the ``pgpass`` file (libpq
``passfile``), so they can be written to runtime.json and logs.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from .ports import UNPRIVILEGED_PORTS, pick_port
from .runtime import world_reachable

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RuntimeError):
    """The cluster could not be set up, started or stopped; the message says why."""


def free_port() -> int:
    # Not the platform's privileged range: the server runs as the postgres account, which
    # cannot bind there (a TCP listener is for tests; the platform's database has no port).
    return pick_port(UNPRIVILEGED_PORTS)


class LocalPostgres:
    """One PostgreSQL cluster in ``base_dir`` with one login role and its database.

    ``start()`` initialises the cluster on first use and is idempotent; ``stop()`` stops it.
    ``settings`` adds ``postgresql.conf`` lines (tests pass ``fsync=off``).
    """

    def __init__(
        self,
        base_dir: str | Path,
        *,
        listen: str = "unix",
        port: int | None = None,
        role: str = "twinhub",
        dbname: str = "twinhub",
        bin_dir: str | Path = PG_BIN,
        settings: dict[str, str] | None = None,
    ) -> None:
        if listen not in ("unix", "tcp"):
            raise ValueError(f"listen must be 'unix' or 'tcp', got {listen!r}")
        for what, ident in (("role", role), ("dbname", dbname)):
            if not _IDENT.match(ident):
                raise ValueError(f"{what} {ident!r} must be a lowercase SQL identifier")
        self.base_dir = Path(base_dir).resolve()
        self.listen = listen
        self.role = role
        self.dbname = dbname
        self.bin_dir = Path(bin_dir)
        self.settings = dict(settings or {})
        self.data_dir = self.base_dir / "data"
        self.run_dir = self.base_dir / "run"
        self.passfile = self.base_dir / "pgpass"
        self.log_file = self.run_dir / "postgres.log"
        self._port_file = self.base_dir / "port"
        if port is None and self._port_file.exists():
            port = int(self._port_file.read_text())
        # The unix socket's name carries the port too, so a fixed one is fine in a private dir.
        self.port = port or (free_port() if listen == "tcp" else 5432)
        if os.geteuid() == 0:
            self.os_user = "postgres"
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresError("no 'postgres' OS account: install postgresql-15") from e
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        else:
            self.os_user = pwd.getpwuid(os.geteuid()).pw_name
            self._uid, self._gid = os.geteuid(), os.getegid()

    # -- commands -------------------------------------------------------------------------
    def _cmd(self, name: str, *args: str) -> list[str]:
        exe = self.bin_dir / name
        if not exe.exists():
            raise PostgresError(f"{exe} not found: install Debian's postgresql-15")
        argv = [str(exe), *args]
        return ["runuser", "-u", self.os_user, "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, name: str, *args: str, input: str | None = None, check: bool = True):
        r = subprocess.run(
            self._cmd(name, *args),
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",  # runuser keeps the cwd, which the postgres account may not reach
        )
        if check and r.returncode != 0:
            raise PostgresError(f"{name} {' '.join(args[:2])} failed: {r.stderr.strip()}")
        return r

    def _psql(self, sql: str, dbname: str = "postgres") -> str:
        r = self._run(
            "psql",
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.run_dir), "-p", str(self.port), "-U", self.os_user, "-d", dbname,
            input=sql,
        )  # fmt: skip
        return r.stdout

    # -- lifecycle ------------------------------------------------------------------------
    def _check_reachable(self) -> None:
        if os.geteuid() == 0 and not world_reachable(self.base_dir.parent):
            raise PostgresError(
                f"the postgres OS account cannot reach {self.base_dir}: every directory above "
                "it must be world-traversable (chmod o+x), e.g. use a directory under /var/lib"
            )

    def _private_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, self._uid, self._gid)
        path.chmod(0o700)

    def _write_config(self) -> None:
        lines = {
            "listen_addresses": "'127.0.0.1'" if self.listen == "tcp" else "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.run_dir}'",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            "max_connections": "50",
            **self.settings,
        }
        conf = "".join(f"{k} = {v}\n" for k, v in lines.items())
        (self.data_dir / "twinhub.conf").write_text(
            "# written by twinhub.process.postgres\n" + conf
        )
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include 'twinhub.conf'" not in text:
            main.write_text(text + "\ninclude 'twinhub.conf'\n")
        # Replaces initdb's file entirely: no 'trust' line survives.
        hba = (
            "# written by twinhub.process.postgres: never 'trust'\n"
            f"local all {self.os_user} peer\n"
            "local all all scram-sha-256\n"
        )
        if self.listen == "tcp":
            hba += "host all all 127.0.0.1/32 scram-sha-256\n"
        (self.data_dir / "pg_hba.conf").write_text(hba)
        for f in ("twinhub.conf", "pg_hba.conf", "postgresql.conf"):
            os.chown(self.data_dir / f, self._uid, self._gid)
            (self.data_dir / f).chmod(0o600)

    def init(self) -> None:
        """Create the cluster's directories and run initdb (once)."""
        self._check_reachable()
        self.base_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        self._private_dir(self.run_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._private_dir(self.data_dir)
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.os_user,
                "--auth-local=peer", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--no-locale", "--no-instructions",
            )  # fmt: skip
        self._write_config()
        self._port_file.write_text(str(self.port))

    def accepting(self, timeout: int = 2) -> bool:
        """True once the server accepts connections on its socket (a real connection attempt:
        a socket file left by a killed server is not enough)."""
        exe = self.bin_dir / "pg_isready"
        host = "127.0.0.1" if self.listen == "tcp" else str(self.run_dir)
        try:
            r = subprocess.run(
                [str(exe), "-q", "-h", host, "-p", str(self.port), "-t", str(timeout),
                 "-U", self.os_user, "-d", "postgres"],
                capture_output=True, timeout=timeout + 5, cwd="/",
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0

    def clear_stale_locks(self) -> list[str]:
        """Remove the lock files a killed (``kill -9``) server left: ``postmaster.pid`` and the
        socket's lock and file, when the pid they name is no longer a postgres process.
        Returns what was removed.  A live server's files are never touched."""
        removed = []
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists() and not _is_postgres(_lock_pid(pidfile)):
            pidfile.unlink(missing_ok=True)
            removed.append(str(pidfile))
        for lock in self.run_dir.glob(".s.PGSQL.*.lock"):
            if _is_postgres(_lock_pid(lock)):
                continue
            sock = lock.with_suffix("")
            for f in (lock, sock):
                if f.exists() or f.is_socket():
                    f.unlink(missing_ok=True)
                    removed.append(str(f))
        return removed

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self, timeout: int = 60) -> None:
        """Initialise if needed, start the server and make sure the role and database exist."""
        self.init()
        self.clear_stale_locks()
        if not self.is_running():
            self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", str(timeout),
            )  # fmt: skip
        self._ensure_role()
        self.create_database(self.dbname)

    def stop(self, timeout: int = 60) -> None:
        if self.is_running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                      "-t", str(timeout))  # fmt: skip

    # -- role, password, databases ---------------------------------------------------------
    @property
    def password(self) -> str:
        """The role's password (created on first use, 0600 pgpass file)."""
        if not self.passfile.exists():
            pw = secrets.token_hex(24)
            fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                # host '*': matches the socket directory as well as 127.0.0.1.
                fh.write(f"*:{self.port}:*:{self.role}:{pw}\n")
        return self.passfile.read_text().strip().rsplit(":", 1)[1]

    def _ensure_role(self) -> None:
        # The password travels on psql's stdin, never on a command line; hex needs no quoting.
        self._psql(
            f"SELECT format('CREATE ROLE %I LOGIN', '{self.role}')"
            f" WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.role}')\\gexec\n"
            f"ALTER ROLE {self.role} LOGIN PASSWORD '{self.password}';\n"
        )
        # The pgpass line names the port: rewrite it if the cluster moved to another port.
        line = f"*:{self.port}:*:{self.role}:{self.password}\n"
        if self.passfile.read_text() != line:
            self.passfile.write_text(line)

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by the role (if missing); returns its URL."""
        if not _IDENT.match(name):
            raise ValueError(f"database name {name!r} must be a lowercase SQL identifier")
        self._psql(
            f"SELECT format('CREATE DATABASE %I OWNER %I', '{name}', '{self.role}')"
            f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
        )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        if not _IDENT.match(name):
            raise ValueError(f"database name {name!r} must be a lowercase SQL identifier")
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);\n')

    def url_for(self, dbname: str) -> str:
        host = "127.0.0.1" if self.listen == "tcp" else ""
        query = f"passfile={self.passfile}"
        if self.listen == "unix":
            query = f"host={self.run_dir}&port={self.port}&{query}"
            return f"postgresql+psycopg://{self.role}@/{dbname}?{query}"
        return f"postgresql+psycopg://{self.role}@{host}:{self.port}/{dbname}?{query}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the role's database (no password in it: see ``passfile``)."""
        return self.url_for(self.dbname)

    def remove(self) -> None:
        """Stop the server and delete the whole cluster directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _lock_pid(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def _is_postgres(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False
