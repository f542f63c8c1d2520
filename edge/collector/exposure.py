"""The exposure budget: what one user has learnt about one plate, added up over all their searches.

A movement history is not only a long plate search: 31 one-day searches, or a camera's reads day by
day, give the same. So every search that shows reads records, per plate (its look-alike key, so
O/0 and the like count as one plate), the time window it covered and the reads it showed. A plate
whose windows together cover more than `history_hours`, or of which more than `history_reads`
reads have been shown, is over its budget for that user: a plate search for it then needs a
supervisor's approval (a request is filed), and other searches leave its reads out, saying how
many they left out. What an approved search showed does not count against the budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from edge.collector.store import Store

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS exposure (
        user_name TEXT NOT NULL, plate_key TEXT NOT NULL, since_ms BIGINT NOT NULL, until_ms BIGINT NOT NULL,
        read_ids TEXT NOT NULL, created BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS exposure_user_key ON exposure (user_name, plate_key)",
]


def union_ms(windows: list[tuple[int, int]]) -> int:
    """The length of the union of [since, until] windows."""
    total, end = 0, None
    start = 0
    for a, b in sorted(windows):
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end is not None:
        total += end - start
    return total


class Exposure:
    def __init__(self, store: Store, history_ms: int, history_reads: int, ref: Callable[[str], str] = lambda k: k):
        # `ref`: how a plate is named here (a keyed hash: the table lists no plates)
        self.s, self.history_ms, self.history_reads, self.ref = store, history_ms, history_reads, ref
        with self.s.tx():
            for stmt in SCHEMA:
                self.s.execute(stmt)

    def seen(self, user: str, key: str) -> tuple[list[tuple[int, int]], set[str]]:
        rows = self.s.query("SELECT since_ms, until_ms, read_ids FROM exposure WHERE user_name = ? AND plate_key = ?",
                            (user, self.ref(key)))
        return [(int(a), int(b)) for a, b, _ in rows], {i for _, _, ids in rows for i in json.loads(ids)}

    def over(self, user: str, key: str, since: int, until: int, read_ids: set[str]) -> bool:
        """Whether showing these reads of this plate, from this window, would take the user past the budget."""
        windows, ids = self.seen(user, key)
        new = read_ids - ids
        if not new:
            return False  # nothing they have not seen already
        return union_ms([*windows, (since, until)]) > self.history_ms or len(ids | read_ids) > self.history_reads

    def record(self, user: str, key: str, since: int, until: int, read_ids: set[str], now_ms: int) -> None:
        self.s.execute("INSERT INTO exposure (user_name, plate_key, since_ms, until_ms, read_ids, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (user, self.ref(key), since, until, json.dumps(sorted(read_ids)), now_ms))

    def forget_reads(self, read_ids: list[str]) -> None:
        """Retention: a deleted read leaves no trace here either (its id in a user's budget)."""
        gone = set(read_ids)
        if not gone:
            return
        for rowid_user, key, since, until, ids in self.s.query(
                "SELECT user_name, plate_key, since_ms, until_ms, read_ids FROM exposure"):
            had = json.loads(ids)
            left = [i for i in had if i not in gone]
            if not left:
                self.s.execute("DELETE FROM exposure WHERE user_name = ? AND plate_key = ? AND since_ms = ? AND until_ms = ?",
                               (rowid_user, key, since, until))
            elif len(left) != len(had):
                self.s.execute("UPDATE exposure SET read_ids = ? WHERE user_name = ? AND plate_key = ? AND since_ms = ? "
                               "AND until_ms = ?", (json.dumps(left), rowid_user, key, since, until))
