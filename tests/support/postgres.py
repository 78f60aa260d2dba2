"""PostgreSQL for the test suite: find a server, or start a throwaway one.

``postgres_url()`` resolves, once per process, in this order:

1. ``NEXUS_TEST_DATABASE_URL`` or ``DATABASE_URL`` from the environment;
2. a server on 127.0.0.1:5432 that lets user ``postgres`` in without a password;
3. a throwaway cluster in a temporary directory, stopped and deleted at exit.

Setting ``NEXUS_TEST_PG_FORCE_THROWAWAY=1`` skips 1 and 2, so the throwaway
path can be exercised on a machine that has a server.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tools.devstack import free_port

URL_ENV_VARS = ("NEXUS_TEST_DATABASE_URL", "DATABASE_URL")
FORCE_THROWAWAY_ENV = "NEXUS_TEST_PG_FORCE_THROWAWAY"
LOCAL_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

_DRIVER_SCHEME = "postgresql+psycopg"
_ACCEPTED_SCHEMES = frozenset({"postgres", "postgresql", _DRIVER_SCHEME})
_SUPERUSER = "postgres"
# initdb and postgres refuse to run as root, so as root they run as this OS user.
_OS_USER = "postgres"


@functools.cache
def postgres_url() -> str:
    """SQLAlchemy URL (psycopg 3 driver) of a server the tests may use freely."""
    if os.environ.get(FORCE_THROWAWAY_ENV, "") in ("", "0"):
        for var in URL_ENV_VARS:
            if value := os.environ.get(var):
                return _normalise(value)
        if _accepts_login(LOCAL_SERVER_URL):
            return LOCAL_SERVER_URL
    return _start_throwaway_cluster()


def fresh_database(base_url: str) -> tuple[str, Callable[[], None]]:
    """Create a uniquely named database on base_url's server.

    Returns the new database's URL and a function that drops it; the drop
    disconnects any sessions a test left open and may be called repeatedly.
    """
    base_url = _normalise(base_url)
    name = f"nexus_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_url(base_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(_libpq_url(base_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    return urlunsplit(urlsplit(base_url)._replace(path=f"/{name}")), drop


def _normalise(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _ACCEPTED_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL usable with psycopg 3: {url!r}")
    return f"{_DRIVER_SCHEME}://{rest}"


def _libpq_url(url: str) -> str:
    return "postgresql://" + url.partition("://")[2]


def _accepts_login(url: str) -> bool:
    # A bare port probe is not enough: a stock Debian server listens on 5432
    # but asks for a password, and then a throwaway cluster is the way on.
    try:
        with psycopg.connect(_libpq_url(url), connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _start_throwaway_cluster() -> str:
    bindir = _postgres_bindir()
    as_os_user = _os_user_wrapper()
    workdir = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
    datadir = workdir / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_OS_USER)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)

    def run(*cmd: str) -> None:
        # cwd=workdir: the OS user may not be allowed into the caller's cwd.
        done = subprocess.run(
            as_os_user(list(cmd)), cwd=workdir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    pg_ctl = str(bindir / "pg_ctl")
    try:
        # --no-sync and the settings below trade durability for speed: the
        # cluster is deleted at exit anyway.
        run(
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        port = free_port()
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{workdir}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        run(
            pg_ctl, "-D", str(datadir), "-l", str(workdir / "server.log"), "-w", "-t", "60", "start"
        )
    except BaseException as failure:
        # The log explains a failed start, and it is about to be deleted.
        log = workdir / "server.log"
        if isinstance(failure, RuntimeError) and log.exists():
            failure.add_note(f"server log:\n{log.read_text(errors='replace')}")
        shutil.rmtree(workdir, ignore_errors=True)
        raise

    def stop() -> None:
        subprocess.run(
            as_os_user([pg_ctl, "-D", str(datadir), "-m", "fast", "-w", "stop"]),
            cwd=workdir,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    return f"{_DRIVER_SCHEME}://{_SUPERUSER}@127.0.0.1:{port}/postgres"


def _postgres_bindir() -> Path:
    # Debian keeps the server binaries off PATH, one directory per major version.
    debian = [
        initdb
        for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if initdb.parents[1].name.isdigit()
    ]
    if debian:
        return max(debian, key=lambda initdb: int(initdb.parents[1].name)).parent
    if initdb := shutil.which("initdb"):
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "no PostgreSQL server reachable and no initdb found to start one: install "
        "PostgreSQL (apt-get install postgresql) or set NEXUS_TEST_DATABASE_URL"
    )


def _os_user_wrapper() -> Callable[[list[str]], list[str]]:
    if os.geteuid() != 0:
        return lambda cmd: cmd
    try:
        pwd.getpwnam(_OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no {_OS_USER!r} OS user to run PostgreSQL as"
        ) from None
    if runuser := shutil.which("runuser"):
        return lambda cmd: [runuser, "-u", _OS_USER, "--", *cmd]
    # su would take the command's own options for its own, so hand it one string.
    return lambda cmd: ["su", "-s", "/bin/sh", "-c", shlex.join(cmd), _OS_USER]
