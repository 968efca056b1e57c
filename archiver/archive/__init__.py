"""The archive: upstream objects made records (parsed, redacted, storable), their lifecycle,
the tables and the store that writes them, the migrations, the poll cycle that joins a listing
to the archive, and retention.

Its one rule: the database is written only here, each cycle's writes in transactions that
commit whole or not at all.
"""
