"""Where the collector keeps image bytes: in the database (the default) or in a directory of files.

Every image has its row in `images` (hash, last_ts, file) in both cases, so exactly-once, retention and
holds work the same; only the bytes move. With a directory (`--images DIR`, env EDGE_COLLECTOR_IMAGES):

- a new image gets a file name of its own (`YYYYMMDD/HH/MM/<hash>-<random>.jpg`, the minute it was first stored)
  written with O_EXCL and fsynced, with its directory, before the transaction naming it commits. A crash
  before the commit leaves a file no row names: the next retention's sweep removes it. A committed row's
  file is therefore always whole on disk.
- an image stored again finds its row (the upsert locks it) and writes nothing; one whose row retention has
  just deleted gets a new row and a new name, so retention's unlink of the old name never takes it.
- retention deletes rows and, in the same transaction, notes their files in `image_trash`; after the commit
  it unlinks them and clears the note. Killed in between, the next retention finishes the unlinks.
- the directory carries a marker (`EDGE-IMAGES`) naming the database's image store, recorded in that
  database with the directory's path: every command finds the directory without being told, and one given
  a directory that is not this store's refuses to start.

An unlinked file's blocks are freed, not overwritten: keep the directory on an encrypted volume (LUKS), as
the database's own files should be.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("edge.collector.images")

MARKER = "EDGE-IMAGES"
SWEEP_GRACE_S = 3600  # a file younger than this may belong to a transaction still open: never swept


class ImageDirError(Exception):
    pass


class ImageDir:
    """A directory of image files, one per stored image (see the module's text)."""

    def __init__(self, root: Path, store_id: str):
        self.root = root
        self.store_id = store_id
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="image-fsync")  # fsyncs at once share a journal commit

    @staticmethod
    def marker_of(root: Path) -> str | None:
        try:
            return (root / MARKER).read_text().strip() or None
        except OSError:
            return None

    @classmethod
    def create(cls, root: Path, store_id: str) -> ImageDir:
        """Make (or adopt an empty) directory as this store's."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            if any(p.name != MARKER for p in root.iterdir()):
                raise ImageDirError(f"--images {root}: the directory is not empty and is not an image store; give an empty "
                                    "or new directory")
            tmp = root / f".{MARKER}.{secrets.token_hex(4)}"
            with open(tmp, "w") as f:
                f.write(store_id + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, root / MARKER)
            _fsync_dir(root)
        except OSError as e:
            raise ImageDirError(f"--images {root}: cannot use the directory: {e.strerror}") from None
        return cls(root, store_id)

    def name_for(self, h: str) -> str:
        """A new file's name, in the directory of this minute (by the clock, not the read's time: a
        crash's leftovers are then in the last days' directories, which is all the sweep reads; and a
        batch's files share one directory, so one directory fsync covers them)."""
        now = datetime.now(UTC)
        return f"{now:%Y%m%d}/{now:%H}/{now:%M}/{h}-{secrets.token_hex(6)}.jpg"

    def write(self, files: dict[str, bytes]) -> None:
        """Write new files (relative name -> bytes) and make them durable, with their directories."""
        if not files:
            return
        dirs: set[Path] = set()
        made: set[Path] = set()  # directories made now: their parents' entries must be durable too
        fds = []
        try:
            for name, data in files.items():
                path = self.root / name
                if path.parent not in dirs:
                    for up in (path.parent.parent.parent, path.parent.parent, path.parent):
                        if not up.is_dir():
                            up.mkdir(parents=True, exist_ok=True)
                            made.add(up)
                    dirs.add(path.parent)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            list(self._pool.map(os.fsync, fds))
            list(self._pool.map(_fsync_dir, dirs | {d.parent for d in made}))
        finally:
            for fd in fds:
                os.close(fd)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            log.error("image file %s is missing from %s", name, self.root)
            return None

    def unlink(self, names: Iterable[str]) -> int:
        gone = 0
        for name in names:
            try:
                os.unlink(self.root / name)
                gone += 1
            except FileNotFoundError:
                pass
        return gone

    def days(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.isdigit() and len(p.name) == 8)
        except OSError:
            return []

    def files_of_day(self, day: str, older_than_s: float = SWEEP_GRACE_S) -> list[str]:
        """The files of one day's directory older than `older_than_s` (relative names)."""
        limit = time.time() - older_than_s
        out = []
        for f in sorted((self.root / day).glob("*/*/*.jpg")):
            try:
                if f.stat().st_mtime < limit:
                    out.append(str(f.relative_to(self.root)))
            except FileNotFoundError:
                pass
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
