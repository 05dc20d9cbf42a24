"""A real, private PostgreSQL server for tests: ``initdb`` into a temp dir, ``postgres`` on 127.0.0.1.

The server listens on a free loopback port with its unix socket in the same temp dir, is ready
when a connection succeeds (polled, no fixed sleep), and is stopped by its pid. fsync is off:
the tests check behaviour, not durability.

initdb refuses to run as root; as root (CI here runs as root) the server runs as the
``postgres`` user of Debian's package, or ``nobody``, which must own its data dir.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it
SUPERUSER = "ragrail"
SERVICE_USERS = ("postgres", "nobody")


class PostgresUnavailable(Exception):
    """Why no server can be started here (the tests skip with this reason)."""


@dataclass
class PostgresServer:
    process: subprocess.Popen[bytes]
    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            # FILE_COPY: with fsync off, much faster than the default WAL_LOG copy of template1.
            conn.execute(f"CREATE DATABASE {name} STRATEGY = FILE_COPY")
        return self.url(name)


def find_binaries() -> tuple[Path, Path]:
    """(initdb, postgres): on PATH, else the newest under /usr/lib/postgresql/*/bin (Debian's layout)."""
    found = [shutil.which("initdb"), shutil.which("postgres")]
    if all(found):
        return Path(found[0]), Path(found[1])  # type: ignore[arg-type]
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        initdb, postgres = Path(folder, "initdb"), Path(folder, "postgres")
        if initdb.exists() and postgres.exists():
            return initdb, postgres
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin: "
        "install Debian's postgresql package (scripts/install_tools.sh does, as root)"
    )


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(f"running as root and none of the users {SERVICE_USERS} exists: initdb refuses root")


def start_postgres() -> PostgresServer:
    """initdb + postgres in a new temp dir; returns once a connection succeeds."""
    initdb, postgres = find_binaries()
    user = _service_user()
    # Not pytest's tmp_path: its root is private to root, and the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="ragrail-pg-"))
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        _run_as(user, [str(initdb), "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync"])
        last_error = ""
        for _ in range(START_ATTEMPTS):
            server = _launch(postgres, root, _free_port(), user)
            try:
                _wait_ready(server)
                return server
            except PostgresUnavailable as exc:
                last_error = str(exc)
                stop_postgres(server, remove=False)
        raise PostgresUnavailable(f"postgres did not start: {last_error}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_postgres(server: PostgresServer, *, remove: bool = True) -> None:
    """Fast shutdown (SIGINT) by pid, SIGKILL if it lingers; then deletes its files."""
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
    if remove:
        shutil.rmtree(server.root, ignore_errors=True)


def _launch(postgres: Path, root: Path, port: int, user: pwd.struct_passwd | None) -> PostgresServer:
    log = open(root / f"postgres-{port}.log", "wb")  # noqa: SIM115 - the child holds it
    command = [
        str(postgres), "-D", str(root / "data"), "-h", "127.0.0.1", "-p", str(port), "-k", str(root),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "shared_buffers=16MB", "-c", "max_connections=60",
    ]
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **_as_user(user))
    finally:
        log.close()
    return PostgresServer(process, port, root)


def _wait_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise PostgresUnavailable(f"exited with {server.process.returncode}: {_log_tail(server)}")
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"no connection within {READY_TIMEOUT_S:g} s: {exc}") from exc
        time.sleep(0.05)  # the polling interval, not a wait for readiness


def _log_tail(server: PostgresServer) -> str:
    text = (server.root / f"postgres-{server.port}.log").read_text(errors="replace")
    return " | ".join(text.strip().splitlines()[-5:])


def _run_as(user: pwd.struct_passwd | None, command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, timeout=120, **_as_user(user))
    if result.returncode != 0:
        raise PostgresUnavailable(f"{Path(command[0]).name} failed: {result.stderr.decode(errors='replace')[-500:]}")


def _as_user(user: pwd.struct_passwd | None) -> dict[str, object]:
    if user is None:
        return {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(Path(tempfile.gettempdir()))}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env, "cwd": "/"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
