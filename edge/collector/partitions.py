"""PostgreSQL's reads by day: the live reads (`reads_live`) are range-partitioned on `ts`, one table per UTC day,
named `reads_live_YYYYMMDD`. Days are made ahead of time (`maintain`, at start and with each retention run) and
on demand before a batch with an older or newer day is stored (`ensure`), each in its own short transaction under
an advisory lock, so collectors sharing a database never race to make the same day and an ingest transaction
never waits on a table lock. Retention drops whole days (`drop`); held reads live in `reads_held` and are never in
a day that is dropped.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable

DAY_MS = 86_400_000
AHEAD_DAYS = 7  # days made ahead of the clock
LOCK = 7332  # the advisory lock for making days
_NAME = re.compile(r"^reads_live_(\d{8})$")


def day_of(ts_ms: int) -> int:
    return int(ts_ms) // DAY_MS


def name_of(day: int) -> str:
    return "reads_live_" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))


def day_of_name(name: str) -> int | None:
    m = _NAME.match(name)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y%m%d")) // 86_400


class Days:
    """The days that exist, as the store's connection sees them (a cache, refreshed when a day is missing)."""

    def __init__(self, store):
        self.s = store
        self.known: set[int] = set()
        self.refresh()

    def refresh(self) -> None:
        rows = self.s.query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'reads_live'")
        self.known = {d for (n,) in rows if (d := day_of_name(n)) is not None}

    def ensure(self, days: Iterable[int]) -> list[str]:
        """Make the days not yet made; the names made. Never inside another transaction."""
        if not set(days) - self.known:
            return []
        with self.s.tx():
            return self.make(days)

    def make(self, days: Iterable[int]) -> list[str]:
        """Make the days not yet made, inside the caller's transaction (under the advisory lock); the names made."""
        want = sorted(set(days) - self.known)
        if not want:
            return []
        made = []
        self.s.execute(f"SELECT pg_advisory_xact_lock({LOCK})")
        for d in want:
            name = name_of(d)
            cur = self.s.execute(f"SELECT 1 FROM pg_class WHERE relname = '{name}'")
            if cur.fetchone() is None:
                self.s.execute(f"CREATE TABLE {name} PARTITION OF reads_live FOR VALUES FROM ({d * DAY_MS}) TO ({(d + 1) * DAY_MS})")
                made.append(name)
        self.known |= set(want)
        return made

    def maintain(self, now_ms: int, ahead: int = AHEAD_DAYS) -> list[str]:
        """Today and the next `ahead` days."""
        today = day_of(now_ms)
        return self.ensure(range(today, today + ahead + 1))

    def before(self, cutoff_ms: int) -> list[int]:
        """The days wholly before the cutoff, oldest first."""
        self.refresh()
        return sorted(d for d in self.known if (d + 1) * DAY_MS <= cutoff_ms)

    def drop(self, day: int) -> None:
        """Drop one day (inside the caller's transaction); its held reads are elsewhere already."""
        self.s.execute(f"DROP TABLE IF EXISTS {name_of(day)}")
        self.known.discard(day)
