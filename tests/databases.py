"""The PostgreSQL and MariaDB servers the tests run against: found, or started for the run.

Each server is settled once per run, in the process pytest was started in (under xdist the
controller, before it starts its workers), in this order:

1. ARCHIVER_TEST_POSTGRES_URL / ARCHIVER_TEST_MYSQL_URL when set: that server, which must answer
   within a few seconds, or the run stops at once saying which URL (password masked) and why.
2. This machine's usual server (127.0.0.1:5432 as postgres, 127.0.0.1:3306 as root, database test)
   when it answers.
3. A throwaway server in a temporary directory, on a free port of 127.0.0.1, stopped and removed
   when the run ends: PostgreSQL from the binaries of the pgserver package (the test extra installs
   it), MariaDB from this machine's own server binaries (ARCHIVER_TEST_MARIADB_BIN_DIR, when set,
   is the one place looked in). Where those are absent, the MariaDB tests are skipped, saying why at
   the start and at the end of the run; ARCHIVER_TEST_REQUIRE_DATABASES=1 (as CI sets it) makes
   that an error instead.

A prerequisite that is missing stops the run before any test, with one line saying what to do.
The URLs settled on are put in the environment, which the workers inherit; the fixtures take them
from there through ``postgres_url()`` and ``mariadb_url()``. One line per server at the start says
which one the run uses.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

POSTGRES_ENV = "ARCHIVER_TEST_POSTGRES_URL"
MYSQL_ENV = "ARCHIVER_TEST_MYSQL_URL"
REQUIRE_ENV = "ARCHIVER_TEST_REQUIRE_DATABASES"
MARIADB_BIN_DIR_ENV = "ARCHIVER_TEST_MARIADB_BIN_DIR"
# How the process that settled the servers tells its workers that the MariaDB tests are skipped, and why.
MYSQL_SKIPPED_ENV = "_ARCHIVER_TEST_MYSQL_SKIPPED"

LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

CONNECT_TIMEOUT_S = 3
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
RUN_DIR_PREFIX = "archiver-test-db-"
MARIADB_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


class DatabaseSetupError(Exception):
    """A server the run needs can be neither found nor started; the message says what to do."""


def postgres_url() -> str:
    """The URL of the PostgreSQL server this run uses (an administrator of its database ``test``)."""
    return os.environ.get(POSTGRES_ENV, LOCAL_POSTGRES_URL)


def mariadb_url() -> str:
    """The URL of the MariaDB server this run uses; skips the test where the run has none."""
    reason = os.environ.get(MYSQL_SKIPPED_ENV)
    if reason:
        pytest.skip(reason)
    return os.environ.get(MYSQL_ENV, LOCAL_MYSQL_URL)


# --- the hooks -------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)  # after the terminal reporter is registered, which says the lines
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.getoption("help") or config.getoption("collectonly"):
        return  # a worker takes what its controller settled; a run that runs no test needs none
    try:
        lines = _settle()
    except DatabaseSetupError as error:
        raise pytest.UsageError(str(error)) from None
    for line in lines:
        _say(config, line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A MariaDB test skipped for want of a server is reported where it was skipped, not where the test
    is: so the summary folds all of them into one line instead of one per test."""
    report = yield
    reason = os.environ.get(MYSQL_SKIPPED_ENV)
    if reason and report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(reason):
        report.longrepr = (__file__, mariadb_url.__code__.co_firstlineno, report.longrepr[2])
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The skip said again at the end, where the short summary (-rs, -ra) does not say it already."""
    reason = os.environ.get(MYSQL_SKIPPED_ENV)
    if reason and "s" not in terminalreporter.reportchars:
        terminalreporter.write_line(reason, yellow=True, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _run is not None:
        _run.close()


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(line, file=sys.stderr)
    else:
        reporter.write_line(line, yellow="skipped" in line)


# --- settling both servers ------------------------------------------------------------------------


@dataclass
class Choice:
    """How one server is had: a URL that answers, a throwaway to start, or a skip (its reason)."""

    name: str
    env: str
    url: str | None = None
    why: str = ""  # what the start line says of it
    start: Callable[[Run], tuple[str, str]] | None = None
    cannot_run: str | None = None  # why its tests cannot run, and what would make them: they are skipped

    @property
    def skip(self) -> str | None:
        return f"{self.name} tests skipped: {self.cannot_run}" if self.cannot_run else None


def _settle() -> list[str]:
    """Choose and start the servers; export their URLs; the lines that say what the run uses."""
    os.environ.pop(MYSQL_SKIPPED_ENV, None)
    choices = [_choose_postgres(), _choose_mariadb()]  # cheap: nothing is started before both are known
    if os.environ.get(REQUIRE_ENV) == "1":
        for choice in choices:
            if choice.cannot_run:
                raise DatabaseSetupError(f"{REQUIRE_ENV}=1, but the {choice.name} tests cannot run: {choice.cannot_run}")
    lines = []
    for choice in choices:
        if choice.start is not None:
            choice.url, what = _start(choice.name, choice.start)
            choice.why = f"{what}, {choice.why}"
        if choice.skip:
            os.environ[MYSQL_SKIPPED_ENV] = choice.skip
            lines.append(choice.skip)
        else:
            assert choice.url is not None
            os.environ[choice.env] = choice.url
            lines.append(f"databases: {choice.name} {choice.why}")
    return lines


def _start(name: str, start: Callable[[Run], tuple[str, str]]) -> tuple[str, str]:
    """A throwaway server's URL and what the start line says of it; if it fails, the run's servers are stopped."""
    try:
        run = _the_run()
        try:
            return start(run)
        except BaseException:
            run.close()
            raise
    except OSError as error:  # a directory, a file or a program the setup needs: said in one line too
        raise DatabaseSetupError(f"the throwaway {name} could not be set up: {error}") from None


def _choose_postgres() -> Choice:
    choice = _given_or_local("PostgreSQL", POSTGRES_ENV, LOCAL_POSTGRES_URL)
    if choice.url is None:
        bin_dir = _pgserver_bin_dir()
        if bin_dir is None:
            raise DatabaseSetupError(
                f"no PostgreSQL server answers at 127.0.0.1:5432, and the pgserver package, which the test extra installs "
                f"to start one for the run, is missing: run `make .venv/.installed` (pip install -e '.[test]'), or set "
                f"{POSTGRES_ENV} to a PostgreSQL server")
        choice.start = lambda run: _start_postgres(run, bin_dir)
    return choice


def _choose_mariadb() -> Choice:
    choice = _given_or_local("MariaDB", MYSQL_ENV, LOCAL_MYSQL_URL)
    if choice.url is None:
        binaries = _mariadb_binaries()
        if isinstance(binaries, str):
            choice.cannot_run = (f"no MariaDB server answers at 127.0.0.1:3306, and {binaries} to start one for the run; "
                                 f"install mariadb-server (apt-get install mariadb-server), or set {MYSQL_ENV} to a MariaDB server")
        else:
            choice.start = lambda run: _start_mariadb(run, *binaries)
    return choice


def _given_or_local(name: str, env: str, local_url: str) -> Choice:
    """The server named by ``env``, which must answer, else the local one if it does; else no URL yet."""
    given = os.environ.get(env)
    if given:
        error = _connect_error(given)
        if error is not None:
            raise DatabaseSetupError(f"{env}={_masked(given)} does not answer: {error}")
        return Choice(name, env, url=given, why=f"at {_masked(given)} ({env})")
    error = _connect_error(local_url)
    if error is None:
        return Choice(name, env, url=local_url, why=f"local, at {_masked(local_url)}")
    local = make_url(local_url)
    address = f"{local.host}:{local.port}"
    if _listening(local.host or "127.0.0.1", local.port or 0):
        return Choice(name, env, why=f"as the server at {address} refused {local.username}: {error}")
    return Choice(name, env, why=f"as nothing answers at {address}")


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _connect_error(url: str) -> str | None:
    """Why ``url`` cannot be connected to within a few seconds, or None when it can."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a database URL"
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    try:
        engine = create_engine(parsed, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # whatever stops a connection is the answer, not a crash
        cause = getattr(error, "orig", None) or error
        message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return message.replace(parsed.password, "***") if parsed.password else message
    return None


def _masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


# --- the run's directory and its servers ----------------------------------------------------------


@dataclass
class Server:
    """A throwaway server: its process, the log it writes, and the signal that stops it quickly."""

    process: subprocess.Popen[bytes]
    log: Path
    stop_signal: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Run:
    """The temporary directory of this run's throwaway servers, and the servers, stopped with it."""

    directory: Path
    account: pwd.struct_passwd | None  # the user the servers run as, None for this process's own
    prefix: tuple[str, ...] = ()  # or the command they run under (see _server_identity)
    servers: list[Server] = field(default_factory=list)

    def subdirectory(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir()
        self.give(path)
        return path

    def give(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def close(self) -> None:
        global _run
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        if _run is self:
            _run = None


_run: Run | None = None


def _the_run() -> Run:
    global _run
    if _run is None:
        account, prefix = _server_identity()
        parent = _run_parent(account)
        _remove_stale_run_directories(parent)
        directory = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=parent))
        (directory / "owner").write_text(str(os.getpid()))
        _run = Run(directory, account, prefix)
        _run.give(directory)
        atexit.register(_run.close)  # an interrupted run that never reaches pytest_unconfigure
    return _run


def _remove_stale_run_directories(parent: Path) -> None:
    """The directories of runs that were killed: their servers died with them (see _die_with_parent)."""
    for path in parent.glob(RUN_DIR_PREFIX + "*"):
        try:
            owner = int((path / "owner").read_text())
        except (OSError, ValueError):
            continue  # not ours, or a run still making it
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _run_parent(account: pwd.struct_passwd | None) -> Path:
    """Where to make the run's directory: the temporary directory, if the servers' account can reach it."""
    temp = Path(tempfile.gettempdir())
    if account is None or _others_can_enter(temp):
        return temp
    for other in (Path("/tmp"), Path("/var/tmp")):
        if other.is_dir() and _others_can_enter(other):
            return other
    raise DatabaseSetupError(f"the throwaway database servers run as {account.pw_name}, who cannot reach {temp}: "
                             f"set TMPDIR to a directory that others may enter")


def _server_identity() -> tuple[pwd.struct_passwd | None, tuple[str, ...]]:
    """Whom the servers run as, as PostgreSQL refuses to run as root: this process's own user where it is not
    root; else the unprivileged nobody; else, where nobody is not to be had (as in a user namespace made by
    ``unshare -r``, whose only user is root), a user of a user namespace of their own, made by unshare."""
    if os.geteuid() != 0:
        return None, ()
    try:
        nobody: pwd.struct_passwd | None = pwd.getpwnam("nobody")
    except KeyError:
        nobody = None
    if nobody is not None and _mapped("uid", nobody.pw_uid) and _mapped("gid", nobody.pw_gid):
        return nobody, ()
    unshare = shutil.which("unshare", path=os.pathsep.join([os.environ.get("PATH", ""), *MARIADB_SEARCH]))
    if unshare is None:
        raise DatabaseSetupError("running as root, the throwaway database servers must run as another user, as PostgreSQL "
                                 "refuses root; but this user namespace has no user nobody, and no unshare (util-linux) "
                                 "is installed to make one")
    return None, (unshare, "--map-user=65534", "--map-group=65534")


def _mapped(kind: str, number: int) -> bool:
    """Whether this process's user namespace has the user or group ``number``: a root can become only those."""
    try:
        ranges = Path(f"/proc/self/{kind}_map").read_text().split("\n")
    except OSError:
        return True  # no user namespaces here: every id is
    return any(int(first) <= number < int(first) + int(count)
               for first, _, count in (line.split() for line in ranges if line.strip()))


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in a server's process before it starts: it is killed when this run's process dies, even by
    SIGKILL, so that no server outlives a run that could not stop it."""

    def arrange() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the run died before that was arranged
            os._exit(1)

    return arrange


def _spawn(run: Run, argv: list[str | Path], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` as the run's server account, writing to ``log``, in a session of its own so that a
    Ctrl-C meant for pytest does not stop it before the tests' teardown has used it. Its temporary
    files go beside its log: the account it runs as may not write to this process's TMPDIR."""
    account = {} if run.account is None else {"user": run.account.pw_uid, "group": run.account.pw_gid, "extra_groups": []}
    environment = {**os.environ, "TMPDIR": str(log.parent)}
    with log.open("ab") as out:
        return subprocess.Popen([*run.prefix, *map(str, argv)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent, env=environment, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()), **account)  # type: ignore[call-overload]


def _setup_step(run: Run, argv: list[str | Path], log: Path, what: str) -> None:
    process = _spawn(run, argv, log)
    try:
        code = process.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise DatabaseSetupError(f"{what} took over {START_TIMEOUT_S} s: {_tail(log)}") from None
    if code != 0:
        raise DatabaseSetupError(f"{what} failed (exit {code}): {_tail(log)}")


def _serve(run: Run, start: Callable[[int], tuple[Server, str]], what: str) -> tuple[int, str]:
    """Start a server on a free port, and wait until its URL answers; a port taken meanwhile is retried."""
    for _ in range(3):
        port = _free_port()
        server, url = start(port)
        run.servers.append(server)
        if _answers(server, url, what):
            return port, url
        if "already in use" not in server.log.read_text(errors="replace"):
            raise DatabaseSetupError(f"{what} exited at start (exit {server.process.returncode}): {_tail(server.log)}")
    raise DatabaseSetupError(f"{what} found no free port: {_tail(server.log)}")


def _answers(server: Server, url: str, what: str) -> bool:
    """Whether the server answers at ``url`` once started: False if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (error := _connect_error(url)) is not None:
        if server.process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise DatabaseSetupError(f"{what} did not answer within {START_TIMEOUT_S} s ({error}): {_tail(server.log)}")
        time.sleep(0.1)
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 3) -> str:
    """Why a server or its setup stopped, on one line: the last errors in its log, else its last lines."""
    try:
        said = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    errors = [line for line in said if re.search(r"\b(ERROR|FATAL|PANIC)\b", line)]
    return " | ".join((errors or said)[-lines:]) or "(nothing in its log)"


def _create_database(url: str, name: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        engine.dispose()


# --- PostgreSQL, from the pgserver package ---------------------------------------------------------


def _pgserver_bin_dir() -> Path | None:
    # Found, not imported: importing pgserver would set up its own server management, unused here.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").exists() else None


def _start_postgres(run: Run, bin_dir: Path) -> tuple[str, str]:
    if run.account is not None and not _others_can_enter(bin_dir):
        bin_dir = _copy_pgserver(bin_dir, run)
    home = run.subdirectory("pg")
    data = home / "data"
    log = home / "log"
    _setup_step(run, [bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C",
                      "--no-sync", "--no-instructions"], log, "PostgreSQL's initdb")

    def start(port: int) -> tuple[Server, str]:
        # Nothing but TCP on 127.0.0.1: no socket in a directory the server may not write to. Durability is
        # not wanted of a server removed at the end of the run.
        argv: list[str | Path] = [bin_dir / "postgres", "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                                  "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "synchronous_commit=off",
                                  "-c", "full_page_writes=off"]
        # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to go.
        return Server(_spawn(run, argv, log), log, signal.SIGINT), f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    port, admin_url = _serve(run, start, "the throwaway PostgreSQL")
    _create_database(admin_url, "test")
    version = (data / "PG_VERSION").read_text().strip()
    what = f"{version} throwaway (pgserver {importlib.metadata.version('pgserver')}) at 127.0.0.1:{port}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", what


def _others_can_enter(path: Path) -> bool:
    """Whether an unprivileged account can reach into ``path``: it and every directory above it let others through."""
    return all(os.stat(directory).st_mode & stat.S_IXOTH for directory in (path, *path.parents))


def _copy_pgserver(bin_dir: Path, run: Run) -> Path:
    """pgserver's server, copied where the unprivileged account that runs it can read it (root's own home
    is closed to others). Its binaries find their libraries at ../../../pgserver.libs: that layout is kept."""
    package = bin_dir.parent.parent
    target = run.directory / "pgserver"
    shutil.copytree(package / "pginstall", target / "pginstall", ignore=shutil.ignore_patterns("include"))
    libs = package.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, run.directory / "pgserver.libs")
    return target / "pginstall" / "bin"


# --- MariaDB, from this machine's server binaries --------------------------------------------------


def _mariadb_binaries() -> tuple[Path, Path, str] | str:
    """This machine's MariaDB server and install-db programs and the server's version, or why there are none."""
    only = os.environ.get(MARIADB_BIN_DIR_ENV)
    if only:
        path, where = only, f"{MARIADB_BIN_DIR_ENV} ({only})"
    else:
        path = os.pathsep.join([*os.environ.get("PATH", "").split(os.pathsep), *MARIADB_SEARCH])
        where = "PATH, /usr/sbin or /usr/bin"
    server = shutil.which("mariadbd", path=path) or shutil.which("mysqld", path=path)
    install = shutil.which("mariadb-install-db", path=path) or shutil.which("mysql_install_db", path=path)
    missing = [name for name, found in (("mariadbd", server), ("mariadb-install-db", install)) if not found]
    if server is None or install is None:
        return f"no {' or '.join(missing)} is in {where}"
    done = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30, check=False)
    version = re.search(r"Ver (\d+(?:\.\d+)*)-MariaDB", done.stdout)
    if version is None:  # a mysqld of Oracle's MySQL: the tests are MariaDB's
        return f"{server} is not MariaDB ({done.stdout.strip() or done.stderr.strip()})"
    return Path(server), Path(install), version[1]


def _start_mariadb(run: Run, server: Path, install: Path, version: str) -> tuple[str, str]:
    home = run.subdirectory("my")
    data = home / "data"
    log = home / "log"
    _setup_step(run, [install, "--no-defaults", f"--basedir={server.parent.parent}", f"--datadir={data}",
                      "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                log, "mariadb-install-db")

    def start(port: int) -> tuple[Server, str]:
        # --no-defaults: nothing of this machine's own server's configuration. The character set is Debian's
        # default for the server (MariaDB's own is latin1); durability is not wanted of a throwaway.
        argv: list[str | Path] = [server, "--no-defaults", f"--datadir={data}", f"--socket={home / 'sock'}",
                                  f"--pid-file={home / 'pid'}", f"--tmpdir={home}", f"--port={port}", "--bind-address=127.0.0.1",
                                  "--skip-name-resolve", "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                                  "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
        return Server(_spawn(run, argv, log), log, signal.SIGTERM), f"mysql+pymysql://root@127.0.0.1:{port}/"

    port, admin_url = _serve(run, start, "the throwaway MariaDB")
    _create_database(admin_url, "test")
    return f"mysql+pymysql://root@127.0.0.1:{port}/test", f"{version} throwaway ({server}) at 127.0.0.1:{port}"
