"""Running cycles on a schedule: the runner (one for `archiver sync` and `archiver run`), the
listing cadence, the account leases that keep replicas apart, and the metrics and health
endpoints.

Its one rule: it decides when and for whom a cycle runs, never what a cycle writes.
"""
