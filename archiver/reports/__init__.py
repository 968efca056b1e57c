"""Audit queries over the archive, shared by the CLI's status, reports, exports and the demo. Read-only.

One module per question: ``overview`` (status and demo summaries), ``open_at`` (who was open at
a moment), ``window`` (sessions that started or ended in a window), ``stats`` (close reasons and
durations), ``story`` (one session's history), ``ledger`` (the poll cycles), ``export`` (streamed rows),
``usage`` (browser time, concurrency and the bill, from ``spans``), ``coverage`` (what the cycles
saw), ``incident`` (a post-incident review built from the others).
"""

from archiver.reports.overview import close_reasons, last_runs, recent_closed, sessions_by_status
from archiver.reports.result import Result
from archiver.reports.window import Window

__all__ = ["Result", "Window", "close_reasons", "last_runs", "recent_closed", "sessions_by_status"]
