"""The `archiver` command: a thin layer that wires settings to the modules that do the work.

This is the only module that prints or exits: errors become one line on stderr and an exit code
(2 for settings and usage, 1 for everything else).

Each command imports what it needs when it runs: at module level only the standard library,
click and the archiver's light modules, so that `--help`, `--version` and shell completion do not
pay for SQLAlchemy, Alembic, httpx and pydantic.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from archiver import __version__, timeparse
from archiver.errors import ArchiverError, ConfigError, InputError, first_line
from archiver.logs import configure_logging, json_logging
from archiver.render import FORMATS, STREAM_FORMATS, printable, table, write_document, write_rows
from archiver.vocabulary import CYCLE_COUNTERS, EXPORT_TABLES, PRUNE_BATCH, STATUSES, Outcome

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from archiver.archive.sync import CycleResult
    from archiver.config import Settings
    from archiver.reports.result import Result
    from archiver.reports.usage import Pricing


@dataclass
class App:
    """What every command shares: the config file, and the settings once read."""

    config_file: Path | None
    _settings: Settings | None = field(default=None, repr=False)
    # One "now" per command, so that --since 24h and --until now agree to the microsecond.
    now: datetime = field(default_factory=timeparse.utcnow)

    def settings(self) -> Settings:
        if self._settings is None:
            from archiver.config import load_settings

            self._settings = load_settings(self.config_file)
            configure_logging(self._settings.log_level, self._settings.log_format, self._settings.secret_values())
        return self._settings

    def engine(self, *, read_only: bool = False, bounded: bool = False) -> Engine:
        from archiver.archive.store import make_engine

        return make_engine(self.settings().database_url.get_secret_value(), read_only=read_only, bounded=bounded)

    def archive(self) -> Engine:
        """The engine of a database that must already be at the current schema."""
        from archiver.archive import migrate

        engine = self.engine()
        migrate.require_current(engine)
        return engine

    def reader(self) -> Engine:
        """The engine of an archive at the current schema, for a command that only reads it: a
        SQLite file is opened read-only, and never created."""
        from archiver.archive import migrate

        engine = self.engine(read_only=True)
        migrate.require_current(engine)
        return engine


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ARCHIVER_CONFIG",
    help="TOML file with settings (environment variables win over it).",
)
@click.version_option(__version__, prog_name="archiver")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Archive Cloudflare Browser Rendering DevTools sessions into a SQL database."""
    ctx.obj = App(config)


@cli.command()
@click.option("--auto-migrate", is_flag=True, help="Migrate the database to the current schema first.")
@pass_app
def sync(app: App, auto_migrate: bool) -> int:
    """Run one poll cycle for every configured account; exit 1 if any account failed."""
    from archiver.library import Archive

    settings = app.settings()
    settings.credentials(), settings.accounts()  # fail fast, before touching the database
    if auto_migrate:
        _ensure_schema(app.engine(), auto_migrate)  # a migration may take its time; the cycles may not
    archive = Archive(settings)
    archive.engine(bounded=True)
    _freeze_startup_objects()
    from archiver.progress import Progress

    results = archive.sync(Progress.on_stderr())  # checks the schema first
    for result in results:
        click.echo(_describe_cycle(result))
    return 1 if any(r.failed for r in results) else 0


@cli.command()
@click.option("--auto-migrate", is_flag=True, help="Migrate the database to the current schema first.")
@pass_app
def run(app: App, auto_migrate: bool) -> int:
    """Poll every account on a schedule until SIGTERM or SIGINT (a second one stops at once)."""
    import asyncio

    from archiver.service.runner import Runner

    settings = app.settings()
    settings.credentials(), settings.accounts()
    _ensure_schema(app.engine(), auto_migrate)
    engine = app.engine(bounded=True)
    _freeze_startup_objects()
    return asyncio.run(Runner(settings, engine).serve())


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_app
def db_upgrade(app: App, revision: str) -> int:
    """Migrate the database to the latest schema (or to --revision)."""
    from archiver.archive import migrate

    engine = app.engine()
    migrate.upgrade(engine, revision)
    click.echo(f"database at revision {migrate.current_revision(engine)}")
    return 0


@db.command("downgrade")
@click.argument("revision")
@pass_app
def db_downgrade(app: App, revision: str) -> int:
    """Migrate the database down to REVISION ('base' removes every archiver table)."""
    from archiver.archive import migrate

    engine = app.engine()
    migrate.downgrade(engine, revision)
    click.echo(f"database at revision {migrate.current_revision(engine) or 'base'}")
    return 0


@db.command("current")
@pass_app
def db_current(app: App) -> int:
    """Show the database's schema revision and this version's latest."""
    from archiver.archive import migrate

    current = migrate.current_revision(app.engine(read_only=True))
    click.echo(f"current: {current or 'none'}\nlatest:  {migrate.head_revision()}")
    return 0


@cli.command()
@pass_app
def status(app: App) -> int:
    """Show the last cycle of every account and the archived sessions by status."""
    from archiver import reports

    with app.reader().connect() as conn:
        runs = reports.last_runs(conn)
        counts = reports.sessions_by_status(conn)
    click.echo("Last cycle per account")
    click.echo(
        table(
            ["account", "run", "finished (UTC)", "outcome", "complete", "listed", "requests", "error"],
            [
                (r["account_id"], r["id"], r["finished_at"], r["outcome"], r["listing_complete"], r["listed"],
                 r["api_requests"], (r["error"] or "")[:60])
                for r in runs
            ],
        )
    )
    click.echo("\nSessions by status")
    click.echo(table(["account", "status", "sessions"], counts))
    return 0


@cli.command()
@click.option("--port", type=int, default=8787, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--accounts", type=int, default=1, show_default=True, help="How many accounts to emulate.")
@click.option("--sessions", type=int, default=20, show_default=True, help="Active sessions at start, per account.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed: the same seed gives the same world.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Simulated seconds per real second.")
@click.option("--spawn-per-minute", type=float, default=30.0, show_default=True, help="New sessions per simulated minute.")
@click.option("--mean-lifetime", type=float, default=60.0, show_default=True, help="Mean session lifetime, simulated seconds.")
@click.option("--retention", type=float, default=300.0, show_default=True, help="Seconds a closed session stays retrievable.")
@click.option("--close-reason-style", type=click.Choice(["string", "number", "mixed"]), default="mixed", show_default=True)
@click.option("--latency-ms", type=float, default=0.0, help="Fault: latency added to every response.")
@click.option("--error-rate", type=float, default=0.0, help="Fault: share of requests answered 429/500/503.")
@click.option("--timeout-rate", type=float, default=0.0, help="Fault: share of requests that hang past a client timeout.")
@click.option("--malformed-rate", type=float, default=0.0, help="Fault: share of bodies that are truncated JSON.")
@click.option("--odd-fields-rate", type=float, default=0.0, help="Fault: share of items with missing, extra or mistyped fields.")
@click.option("--drift", is_flag=True, help="Fault: close a session on an earlier page between page requests.")
@click.option("--envelope", is_flag=True, help="Wrap bodies in the v4 {success, result} envelope.")
@click.option("--enforce-rate-limit", is_flag=True, help="Answer 429 past 1200 requests per 5 minutes per token.")
def emulator(port: int, accounts: int, sessions: int, seed: int, speed: float, spawn_per_minute: float,
             mean_lifetime: float, retention: float, close_reason_style: str, **faults: Any) -> int:
    """Serve a Cloudflare-compatible fake of the session endpoints on 127.0.0.1."""
    from archiver.emulator import Emulator, Faults, serve_forever

    emu = Emulator(
        accounts=accounts, initial_sessions=sessions, seed=seed, speed=speed, spawn_per_minute=spawn_per_minute,
        mean_lifetime_s=mean_lifetime, retention_s=retention, close_reason_style=close_reason_style,
        faults=Faults(**faults),
    )

    def announce(base_url: str) -> None:
        click.echo(f"Cloudflare emulator listening on {base_url}")
        click.echo("Point the archiver at it with:")
        click.echo(f"  export CLOUDFLARE_BASE_URL={base_url}")
        click.echo(f"  export CLOUDFLARE_API_TOKEN={emu.token}")
        click.echo(f"  export CLOUDFLARE_ACCOUNT_ID={','.join(emu.account_ids)}")
        click.echo("Ground truth: GET /__emulator/truth   Stop: Ctrl-C")

    try:
        serve_forever(emu, port, on_ready=announce)
    except OSError as exc:  # the port is taken
        raise InputError(f"--port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    return 0


DEMO_DATABASE = "sqlite:///archiver-demo.db"


@cli.command()
@click.option("--cycles", type=click.IntRange(1, 100), default=8, show_default=True, help="Poll cycles to run.")
@click.option("--interval", type=click.FloatRange(0, 60), default=2.0, show_default=True, help="Seconds between cycles.")
@click.option("--database", default=DEMO_DATABASE, show_default=True, help="SQLAlchemy URL (the default file is recreated).")
@click.option("--seed", type=int, default=7, show_default=True)
def demo(cycles: int, interval: float, database: str, seed: int) -> int:
    """Archive an emulated account for a few cycles and show what was kept. Needs no settings."""
    import asyncio

    from archiver.demo import run_demo

    configure_logging("WARNING")
    if database == DEMO_DATABASE:
        Path("archiver-demo.db").unlink(missing_ok=True)
    click.echo(f"Archiving an emulated Cloudflare account into {database} ({cycles} cycles, {interval:g}s apart)")

    def progress(number: int, results: list[CycleResult]) -> None:
        for result in results:
            click.echo(f"cycle {number}: {_describe_cycle(result)}")

    summary = asyncio.run(run_demo(database, cycles=cycles, interval=interval, seed=seed, on_cycle=progress))
    click.echo("\nSessions by status")
    click.echo(table(["account", "status", "sessions"], summary.by_status))
    click.echo("\nClose reasons")
    click.echo(table(["reason", "text", "sessions"], summary.reasons))
    click.echo("\nRecently closed")
    click.echo(
        table(
            ["session", "start (UTC)", "end (UTC)", "reason", "text"],
            [(r["session_id"], r["start_time"], r["end_time"], r["close_reason"], r["close_reason_text"])
             for r in summary.recent],
        )
    )
    click.echo(
        f"\nThe emulator had {summary.emulator_sessions} sessions ({summary.emulator_closed} closed). The archive "
        f"holds {summary.archived}, {summary.archived_closed_with_reason} of them closed with a recorded reason.\n"
        f"Of the {summary.alive_while_polling} sessions alive while it polled, it missed {summary.missed}, each living "
        f"at most {summary.longest_missed_s:.1f} simulated seconds, between two polls (up to {summary.widest_poll_gap_s:.1f}s apart)."
    )
    if database == DEMO_DATABASE:
        click.echo("Query it yourself: sqlite3 archiver-demo.db 'select * from browser_sessions limit 5'")
        click.echo("or ask it: ARCHIVER_DATABASE_URL=sqlite:///archiver-demo.db .venv/bin/archiver report reasons --since 1h")
    return 0


class TimeParam(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on, not before
    """An ISO-8601 instant or an age such as 24h; a bad one stops the command with one line (exit 2)."""

    name = "time"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        app = ctx.find_object(App) if ctx is not None else None
        try:
            return timeparse.parse_time(str(value), app.now if app else timeparse.utcnow())
        except InputError as exc:
            raise InputError(f"{_param_name(param)}: {exc}") from None


def _param_name(param: click.Parameter | None) -> str:
    if isinstance(param, click.Option):
        return param.opts[0]
    return param.human_readable_name if param is not None else "time"


class IdParam(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on, not before
    """An account or session id as a user types it: trimmed and lower-cased (as the archive stores
    them), and checked; a malformed one stops the command with one line (exit 2)."""

    def __init__(self, name: str, pattern: str, what: str) -> None:
        self.name = name
        self.pattern = re.compile(pattern)
        self.what = what

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not self.pattern.fullmatch(text):
            raise InputError(f"{_param_name(param)}: {str(value)!r} is not {self.what}")
        return text


TIME = TimeParam()
PRUNE_SAFE_AGE = timedelta(days=1)
ACCOUNT_ID = IdParam("account", r"[0-9a-f]{32}", "a Cloudflare account id (32 hex digits)")
SESSION_ID = IdParam("session", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "a session id (a UUID)")
F = TypeVar("F", bound=Callable[..., Any])
account_option = click.option("--account", type=ACCOUNT_ID, help="Only this account (32 hex digits).")
since_option = click.option("--since", type=TIME, required=True,
                            help="Window start: ISO-8601 (UTC unless zoned) or an age such as 24h, 7d.")
until_option = click.option("--until", type=TIME, default="now", show_default=True, help="Window end (exclusive), same forms as --since.")


def format_option(choices: tuple[str, ...] = FORMATS, default: str = "table") -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(choices), default=default, show_default=True, help="Output format.")


def _show(result: Result, fmt: str) -> int:
    out = sys.stdout
    shown = result.narrowed() if fmt == "table" else result
    write_rows(out, fmt, shown.columns, shown.rows)
    if fmt == "table":
        for note in result.notes:
            click.echo(note)
    return 0


@cli.group()
def report() -> None:
    """Audit reports: who was open when, why sessions closed, how long they lasted, what the cycles did, the bill."""


@report.command("active-at")
@click.argument("when", metavar="TIME", type=TIME)
@account_option
@format_option()
@pass_app
def report_active_at(app: App, when: datetime, account: str | None, fmt: str) -> int:
    """Sessions open at TIME; "maybe" where the end is only known to lie between last seen and vanished."""
    from archiver.reports import open_at

    with app.reader().connect() as conn:
        return _show(open_at.open_at(conn, when, account=account), fmt)


@report.command("sessions")
@since_option
@until_option
@click.option("--reason", help="Only sessions with this close reason (as stored: NormalClosure, 1000, ...).")
@click.option("--status", type=click.Choice(STATUSES), help="Only sessions in this status.")
@account_option
@format_option()
@pass_app
def report_sessions(app: App, since: datetime, until: datetime, reason: str | None, status: str | None,
                    account: str | None, fmt: str) -> int:
    """Sessions that started or ended in the window."""
    from archiver.library import Archive

    with Archive(app.settings()) as archive:
        return _show(archive.sessions(since, until, account=account, reason=reason, status=status), fmt)


@report.command("reasons")
@since_option
@until_option
@click.option("--by", type=click.Choice(["hour", "day"]), help="Count per UTC hour or day.")
@account_option
@format_option()
@pass_app
def report_reasons(app: App, since: datetime, until: datetime, by: str | None, account: str | None, fmt: str) -> int:
    """Close reasons of the sessions that ended in the window, counted, with their texts."""
    from archiver.reports import Window, stats

    with app.reader().connect() as conn:
        return _show(stats.close_reasons(conn, Window(since, until), by=by, account=account), fmt)


@report.command("durations")
@since_option
@until_option
@account_option
@format_option()
@pass_app
def report_durations(app: App, since: datetime, until: datetime, account: str | None, fmt: str) -> int:
    """Count, p50, p90, p99, max and mean of session and connection durations (sessions ended in the window)."""
    from archiver.reports import Window, stats

    with app.reader().connect() as conn:
        return _show(stats.durations(conn, Window(since, until), account=account), fmt)


@report.command("session")
@click.argument("session_id", metavar="ID", type=SESSION_ID)
@account_option
@format_option()
@pass_app
def report_session(app: App, session_id: str, account: str | None, fmt: str) -> int:
    """One session's whole story: every version, the cycles that saw it, first and last seen, vanished, gone."""
    from archiver.reports import story

    with app.reader().connect() as conn:
        stories = story.session_story(conn, session_id, account=account)
    if fmt == "json":
        write_document(sys.stdout,
                       [{"session": st.session, "cycles": st.cycles, "events": st.events.dicts()} for st in stories])
        return 0
    for number, st in enumerate(stories):
        if fmt == "table":
            click.echo(("\n" if number else "") + table(["field", "value"], st.session.items()))
            click.echo("\n" + table(["cycles", "value"], st.cycles.items()) + "\n")
        _show(st.events, fmt)
    return 0


@report.command("usage")
@since_option
@until_option
@click.option("--by", type=click.Choice(["day", "month"]), default="day", show_default=True,
              help="Total per UTC day, or per month with the estimated bill.")
@account_option
@format_option()
@pass_app
def report_usage(app: App, since: datetime, until: datetime, by: str, account: str | None, fmt: str) -> int:
    """Sessions, browser hours and peak concurrency per day or month, with the estimated bill; bounds where ends are unknown."""
    from archiver.reports import Window, usage

    pricing = _pricing(app.settings())
    with app.reader().connect() as conn:
        return _show(usage.usage(conn, Window(since, until), app.now, by=by, account=account, pricing=pricing), fmt)


@report.command("coverage")
@since_option
@until_option
@click.option("--by", type=click.Choice(["hour", "day"]), help="One row per UTC hour or day (else one for the window).")
@account_option
@format_option()
@pass_app
def report_coverage(app: App, since: datetime, until: datetime, by: str | None, account: str | None, fmt: str) -> int:
    """How far the archive can be trusted: gaps between complete listings, incomplete ones, 429s, backlog, unknown ends."""
    from archiver.reports import Window, coverage

    with app.reader().connect() as conn:
        return _show(coverage.coverage(conn, Window(since, until), app.now, by=by, account=account), fmt)


@report.command("incident")
@click.option("--at", "at", type=TIME, required=True, help="The moment of the incident (same forms as --since).")
@click.option("--before", default="30m", show_default=True, help="How far back the window reaches from --at.")
@click.option("--after", default="30m", show_default=True, help="How far on the window reaches from --at.")
@account_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="FILE.md (Markdown) or FILE.html (with the timeline picture).")
@pass_app
def report_incident(app: App, at: datetime, before: str, after: str, account: str | None, output: Path) -> int:
    """One document for a post-incident review: open sessions, closes against the days before, concurrency, coverage."""
    from archiver.reports import document
    from archiver.reports.incident import incident
    from archiver.reports.timeline import build_timeline

    kind = document.format_of(output)
    reach = {name: _age(name, text) for name, text in (("--before", before), ("--after", after))}
    with app.reader().connect() as conn:
        review = incident(conn, at, reach["--before"], reach["--after"], app.now, account=account)
        if kind == "html":
            page, _count = build_timeline(conn, review.window, account=account)
            text = document.html_page(review, page)
        else:
            text = document.markdown(review)
    with _open_output(output) as out:
        out.write(text)
    click.echo(f"wrote {output}")
    return 0


def _age(option: str, text: str) -> timedelta:
    try:
        return timeparse.parse_age(text)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


@report.command("runs")
@since_option
@click.option("--until", type=TIME, help="Only cycles that started before this.")
@click.option("--each", is_flag=True, help="List every cycle instead of a summary per account.")
@account_option
@format_option()
@pass_app
def report_runs(app: App, since: datetime, until: datetime | None, each: bool, account: str | None, fmt: str) -> int:
    """The ledger: cycles, outcomes, listing completeness, API requests, 429s and errors."""
    from archiver.reports import Window, ledger

    query = ledger.runs if each else ledger.runs_summary
    if until is not None:
        Window(since, until)  # rejects an empty range
    with app.reader().connect() as conn:
        return _show(query(conn, since, until=until, account=account), fmt)


@cli.command()
@since_option
@until_option
@click.option("--table", "what", type=click.Choice(EXPORT_TABLES), default="sessions", show_default=True,
              help="sessions (started or ended in the window), versions (observed in it) or runs (started in it).")
@account_option
@format_option(STREAM_FORMATS, "jsonl")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_app
def export(app: App, since: datetime, until: datetime, what: str, account: str | None, fmt: str,
           output: Path | None) -> int:
    """Stream archive rows of a window as CSV or JSON Lines, in constant memory."""
    from archiver.progress import Progress, counted
    from archiver.reports import Window
    from archiver.reports import export as exporting

    window = Window(since, until)
    # Rows written to the terminal show their own progress; a status line would only garble them.
    progress = None if output is None and sys.stdout.isatty() else Progress.on_stderr()
    with app.reader().connect() as conn:
        columns, rows = exporting.export_rows(conn, what, window, account=account)
        rows = counted(rows, progress, lambda done: f"exporting {what}: {done:,} rows written")
        try:
            if output is None:
                count = write_rows(sys.stdout, fmt, columns, rows)
            else:
                with _open_output(output) as out:
                    count = write_rows(out, fmt, columns, rows)
        finally:
            if progress is not None:
                progress.finish()
    click.echo(f"exported {count} {what} rows", err=True)
    return 0


@cli.command()
@since_option
@until_option
@account_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The HTML file to write.")
@pass_app
def timeline(app: App, since: datetime, until: datetime, account: str | None, output: Path) -> int:
    """Draw the sessions of a window as a self-contained HTML page (bars by close reason, concurrency beneath)."""
    from archiver.reports import Window
    from archiver.reports.timeline import build_timeline

    window = Window(since, until)
    with app.reader().connect() as conn:
        page, count = build_timeline(conn, window, account=account)
    with _open_output(output) as out:
        out.write(page)
    click.echo(f"wrote {output} ({count} sessions)")
    return 0


@cli.command()
@click.option("--older-than", "age", required=True, help="Delete history older than this age: 180d, 12w, 36h.")
@click.option("--include-sessions", is_flag=True, help="Also delete sessions that ended before the cutoff (never active ones).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=PRUNE_BATCH, show_default=True,
              help="Rows deleted per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help=f"Delete even with a cutoff younger than {PRUNE_SAFE_AGE.days} day.")
@pass_app
def prune(app: App, age: str, include_sessions: bool, batch_size: int, dry_run: bool, yes: bool) -> int:
    """Delete old versions, ledger rows and rejected records (and, if asked, ended sessions) in batches."""
    from archiver.library import Archive

    reach = timeparse.parse_age(age)
    cutoff = app.now - reach
    with Archive(app.settings()) as archive:
        if reach < PRUNE_SAFE_AGE and not (yes or dry_run):
            # `6m` is six minutes, not six months: say what it would take, and take nothing.
            counts = archive.prune(cutoff, include_sessions=include_sessions, batch_size=batch_size, dry_run=True)
            click.echo(f"would delete rows older than {cutoff:%Y-%m-%d %H:%M:%S} UTC:")
            click.echo(table(["rows", "would delete"], counts.items()))
            raise InputError(f"--older-than {age} reaches back less than a day: nothing deleted; add --yes if that is meant")
        from archiver.progress import Progress

        counts = archive.prune(cutoff, include_sessions=include_sessions, batch_size=batch_size, dry_run=dry_run,
                               progress=Progress.on_stderr())
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} rows older than {cutoff:%Y-%m-%d %H:%M:%S} UTC:")
    click.echo(table(["rows", verb], counts.items()))
    return 0


def _pricing(settings: Settings) -> Pricing:
    from archiver.reports.usage import Pricing

    return Pricing(
        price_browser_hour=settings.price_browser_hour, included_browser_hours=settings.included_browser_hours,
        price_concurrent_browser=settings.price_concurrent_browser,
        included_concurrent_browsers=settings.included_concurrent_browsers,
        idle_keepalive_seconds=settings.idle_keepalive_seconds,
    )


def _open_output(path: Path) -> TextIO:
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _ensure_schema(engine: Engine, auto_migrate: bool) -> None:
    """The schema current (migrated first if asked); the engine, used for that alone, let go."""
    from archiver.archive import migrate

    try:
        if auto_migrate:
            migrate.upgrade(engine)
        else:
            migrate.require_current(engine)
    finally:
        engine.dispose()


def _describe_cycle(result: CycleResult) -> str:
    if result.outcome == Outcome.SKIPPED:
        return f"{result.account_id}: {result.error}"
    counted = ", ".join(f"{counter.word} {result.counts.get(counter.name, 0)}" for counter in CYCLE_COUNTERS)
    line = (
        f"{result.account_id}: {result.outcome} (run {result.run_id}) {counted} in {result.duration_seconds:.2f}s"
        + (f" (detail mode {result.detail_mode})" if result.detail_mode else "")
    )
    return f"{line}\n  error: {printable(result.error)}" if result.error else line


def _freeze_startup_objects() -> None:
    # What is alive now (modules, settings, the engine) lives as long as the process. Out of the
    # garbage collector's sight, it is no longer traversed by every full collection that a cycle's
    # many short-lived rows set off: a tenth of a large listing's time.
    gc.freeze()


def _leave_hung_database_work(code: int) -> None:
    """End the process now if database work still hangs in a thread (a lock someone holds, a
    connection gone silent) once the command is done: stopping on a signal must not wait for it.
    The archive stays consistent: the transaction under way commits whole, or not at all."""
    threads = [t for t in threading.enumerate() if t.name.startswith("db-")]
    for thread in threads:
        thread.join(timeout=0.5)  # an idle one is on its way out
    hung = [t for t in threads if t.is_alive()]
    if hung:
        click.echo(f"warning: leaving {len(hung)} database call(s) that still hang", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _report_fatal(exc: ArchiverError, code: int) -> None:
    """The error that ends the command, and exit: one line on stderr; a JSON record in JSON logs
    (asked for in the environment, when the command stopped before reading its settings)."""
    if not json_logging() and os.environ.get("ARCHIVER_LOG_FORMAT", "").strip().lower() == "json":
        configure_logging(fmt="json")
    if json_logging():
        cause = exc.__cause__
        facts = {"kind": type(exc).__name__, "exit_code": code,
                 "cause": f"{type(cause).__name__}: {first_line(cause)}" if cause is not None else None}
        logging.getLogger("archiver").critical("%s", exc, extra={"facts": facts})
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point of the `archiver` console script."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, InputError) as exc:
        _report_fatal(exc, 2)
    except ArchiverError as exc:
        _report_fatal(exc, 1)
    except BrokenPipeError:
        # The reader of a report (`| head`) has gone: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    _leave_hung_database_work(code)
    sys.exit(code)

