"""A fresh machine passes the tests: where no database server answers, the run starts its own.

Each test runs a few of the suite's database tests in a pytest of its own, inside a network
namespace of its own, where nothing listens on 127.0.0.1 (as on a machine with no database server),
with none of the ARCHIVER_TEST_* variables set but those the test sets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import MARIADB_BIN_DIR_ENV, POSTGRES_ENV, REQUIRE_ENV, RUN_DIR_PREFIX

ROOT = Path(__file__).resolve().parent.parent
# Tests on each backend, through each way a test gets a server: empty_database_url, postgres_url and mariadb_url.
SUBSET = [
    "tests/test_store.py::test_migrations_up_down_and_no_drift",
    "tests/test_store.py::test_a_bounded_engine_bounds_statements_and_lock_waits_and_a_plain_one_does_not",
]
# What stopping a run for want of a prerequisite may take, on a loaded machine: seconds, not the minutes of a full run.
FAST_S = 20


@pytest.fixture(scope="module")
def netns() -> list[str]:
    """The command prefix that runs a command in a network namespace of its own, its loopback up: as
    this user where it is root, else as the root of a user namespace, which is allowed to make one."""
    return namespaces(user_namespace=os.geteuid() != 0)


def namespaces(user_namespace: bool) -> list[str]:
    ip = shutil.which("ip", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    unshare = shutil.which("unshare")
    if ip is None or unshare is None:
        return _cannot("unshare and ip are not both installed (util-linux, iproute2)")
    prefix = [unshare, *(["--map-root-user"] if user_namespace else []), "--net", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]
    done = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        return _cannot(f"no network namespace can be made here ({done.stderr.strip()})")
    return prefix


def _cannot(why: str) -> list[str]:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1, but the fresh-machine tests cannot run: {why}")
    pytest.skip(f"the fresh-machine tests cannot run: {why}; set {REQUIRE_ENV}=1 to fail instead")


@pytest.fixture
def temp() -> Iterator[Path]:
    """The fresh run's TMPDIR, where its servers' directories go: short, and open to the account they run as."""
    path = Path(tempfile.mkdtemp(prefix="fresh-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_fresh(netns: list[str], temp: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """pytest on ``args`` where no database server answers; what it printed, and the seconds it took."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("ARCHIVER_TEST_", "_ARCHIVER_TEST_", "PYTEST_"))}
    environment.update(TMPDIR=str(temp), **env)
    argv = [*netns, sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *args]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False)
    return done, time.monotonic() - started


def assert_no_server_left(temp: Path) -> None:
    assert not list(temp.glob(RUN_DIR_PREFIX + "*")), "the run's directory outlived it"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        assert str(temp) not in arguments, f"a server outlived the run: {arguments!r}"


# Run as root, the servers run as nobody; as the root of a user namespace (unshare -r), which has no nobody,
# as a user of a user namespace nested in it.
@pytest.mark.parametrize("user_namespace", [False, True], ids=["as-root", "as-root-of-a-user-namespace"])
def test_where_no_server_answers_the_run_starts_throwaway_ones_and_removes_them(user_namespace: bool, temp: Path) -> None:
    if not user_namespace and os.geteuid() != 0:
        pytest.skip("only root makes a network namespace without a user namespace")
    done, _ = run_fresh(namespaces(user_namespace), temp, *SUBSET)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^databases: PostgreSQL \d+ throwaway \(pgserver [\d.]+\) at 127\.0\.0\.1:\d+, as nothing answers at "
                     r"127\.0\.0\.1:5432$", done.stdout, re.MULTILINE), output
    assert re.search(r"^databases: MariaDB [\d.]+ throwaway \(\S*mariadbd\) at 127\.0\.0\.1:\d+, as nothing answers at "
                     r"127\.0\.0\.1:3306$", done.stdout, re.MULTILINE), output
    assert done.stdout.splitlines()[-1].startswith("5 passed in"), output
    assert_no_server_left(temp)


def test_without_mariadb_binaries_its_tests_are_skipped_saying_why_at_the_start_and_at_the_end(
    netns: list[str], temp: Path
) -> None:
    done, _ = run_fresh(netns, temp, *SUBSET, **{MARIADB_BIN_DIR_ENV: str(temp)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    said = [number for number, line in enumerate(lines) if "MariaDB tests skipped" in line]
    progress = next(number for number, line in enumerate(lines) if line.endswith("[100%]"))
    assert len(said) == 2 and said[0] < progress < said[1], done.stdout
    assert lines[said[0]] == (f"MariaDB tests skipped: no MariaDB server answers at 127.0.0.1:3306, and no mariadbd or "
                              f"mariadb-install-db is in {MARIADB_BIN_DIR_ENV} ({temp}) to start one for the run; install "
                              f"mariadb-server (apt-get install mariadb-server), or set ARCHIVER_TEST_MYSQL_URL to a MariaDB server")
    assert lines[said[1]].endswith(lines[said[0]]), done.stdout
    assert lines[-1].startswith("3 passed, 2 skipped in"), done.stdout
    assert_no_server_left(temp)


def test_where_databases_are_required_missing_mariadb_binaries_stop_the_run_before_any_test(
    netns: list[str], temp: Path
) -> None:
    done, took = run_fresh(netns, temp, *SUBSET, **{MARIADB_BIN_DIR_ENV: str(temp), REQUIRE_ENV: "1"})
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert f"ERROR: {REQUIRE_ENV}=1, but the MariaDB tests cannot run: no MariaDB server answers" in done.stderr
    assert "passed" not in done.stdout and took < FAST_S, (took, done.stdout)
    assert_no_server_left(temp)


def test_a_named_server_that_does_not_answer_stops_the_run_at_once_naming_it_without_its_password(
    netns: list[str], temp: Path
) -> None:
    url = "postgresql+psycopg://archiver:pw-Zx81q@127.0.0.1:9/test"
    done, took = run_fresh(netns, temp, *SUBSET, **{POSTGRES_ENV: url})
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert (f"ERROR: {POSTGRES_ENV}=postgresql+psycopg://archiver:***@127.0.0.1:9/test does not answer: "
            f"connection failed: ") in done.stderr
    assert "pw-Zx81q" not in done.stdout + done.stderr
    assert "passed" not in done.stdout and took < FAST_S, (took, done.stdout)


def test_without_the_package_that_ships_postgresql_the_run_stops_at_once_saying_how_to_install_it(
    netns: list[str], temp: Path
) -> None:
    shadow = temp / "shadow"
    (shadow / "pgserver").mkdir(parents=True)
    (shadow / "pgserver" / "__init__.py").write_text("")  # a pgserver without its server, found first
    done, took = run_fresh(netns, temp, *SUBSET, PYTHONPATH=str(shadow))
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert ("ERROR: no PostgreSQL server answers at 127.0.0.1:5432, and the pgserver package, which the test extra installs to "
            "start one for the run, is missing: run `make .venv/.installed`") in done.stderr
    assert "passed" not in done.stdout and took < FAST_S, (took, done.stdout)
    assert_no_server_left(temp)
