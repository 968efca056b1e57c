#!/usr/bin/env bash
# Ensure the PostgreSQL and MariaDB servers the tests use are reachable, starting local ones if
# they are installed but stopped. Exits non-zero, naming the server, if one cannot be reached.
# CI runs it; `make test` does not need it, as it starts throwaway servers where none answers
# (tests/databases.py), but then tests against pgserver's PostgreSQL rather than this machine's.
set -uo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 MY_HOST=127.0.0.1 MY_PORT=3306

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {
  for _ in $(seq 1 60); do reachable "$1" "$2" && return 0; sleep 0.5; done
  return 1
}

if [ -z "${ARCHIVER_TEST_POSTGRES_URL:-}" ] && ! reachable $PG_HOST $PG_PORT; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for $PG_HOST $PG_PORT || { echo "PostgreSQL is not reachable on $PG_HOST:$PG_PORT (set ARCHIVER_TEST_POSTGRES_URL)" >&2; exit 1; }
fi

if [ -z "${ARCHIVER_TEST_MYSQL_URL:-}" ] && ! reachable $MY_HOST $MY_PORT; then
  if [ -x /usr/sbin/mariadbd ]; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  wait_for $MY_HOST $MY_PORT || { echo "MariaDB is not reachable on $MY_HOST:$MY_PORT (set ARCHIVER_TEST_MYSQL_URL)" >&2; exit 1; }
fi
echo "test databases reachable"
