"""Image bytes kept in a directory, not in the database (edge.collector.images; issue: national-scale collector).
Real SQLite and PostgreSQL, real files, a real kill -9 in the middle of a write and of a retention."""

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from edge.collector.bench import jpeg_of_size, payload, unique_jpeg
from edge.collector.images import MARKER
from edge.collector.ingest import Ingestor
from edge.collector.store import Store, StoreError, sha256

from .conftest import ROOT, run_edge
from .test_collector import NOW, setup_gov

BASE = jpeg_of_size(20_000, 3)


def crop(i: int) -> bytes:
    return unique_jpeg(BASE, i)


def msg(i: int, when=NOW, text: str | None = None, image: bytes | None = None) -> tuple[str, bytes]:
    d = json.loads(payload(i, base64.b64encode(image or crop(i)).decode(), when))
    if text:
        d["plate"]["text"] = text
        d["plate"]["char_confidences"] = [0.9] * len(text)
    return "t", json.dumps(d).encode()


def files_in(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*.jpg")}


def age(d: Path, seconds: float) -> None:
    """Make every file in the directory look `seconds` old (an hour passing, without waiting for it)."""
    for p in d.rglob("*.jpg"):
        t = time.time() - seconds
        os.utime(p, (t, t))


def test_images_in_a_directory_are_read_back_found_again_and_deleted_by_retention(store, tmp_path):
    d = tmp_path / "images"
    s = Store(store.url, images=str(d))
    assert (d / MARKER).is_file()
    ing = Ingestor(s)
    ing.ingest([msg(1, NOW - timedelta(days=40), "OLD1111"), msg(2, NOW - timedelta(days=40), "HELD222"), msg(3, NOW, "NEW3333")])
    ing.ingest([msg(3, NOW, "NEW3333")])  # a re-send: no second file
    assert len(files_in(d)) == 3
    # the rows stay, the bytes moved out: nothing of the images is in the database
    assert s.one("SELECT COUNT(*) FROM images WHERE file IS NOT NULL AND length(data) = 0")[0] == 3
    hashes = {sha256(crop(i)): i for i in (1, 2, 3)}
    got = s.images(hashes)
    assert {h: crop(i) for h, i in hashes.items()} == got
    # a command given no --images finds the directory the database recorded
    other = Store(store.url)
    assert other.image_dir is not None and other.image(sha256(crop(3))) == crop(3)
    other.close()

    gov, clock = setup_gov(s)
    held = s.one("SELECT read_id FROM reads WHERE plate = 'HELD222'")[0]
    gov.hold("alice", "CASE-1", [held])
    detail = gov.retention()
    assert detail["deleted_reads"] == 1 and detail["image_files_unlinked"] == 1
    audited = json.loads(s.one("SELECT detail FROM audit WHERE action = 'retention.delete'")[0])
    assert audited["image_files"] == 1
    left = files_in(d)
    assert len(left) == 2 and not any(sha256(crop(1)) in f for f in left)
    assert s.image(sha256(crop(2))) == crop(2)  # the held read's image stays
    assert s.one("SELECT COUNT(*) FROM image_trash")[0] == 0
    # the deleted image stored again (another read of it) gets a file of its own, under a new name
    res = ing.ingest([msg(5, NOW, "NEW5555", image=crop(1))])
    assert res.stored == 1, res.outcomes
    assert s.image(sha256(crop(1))) == crop(1) and len(files_in(d)) == 3
    s.close()


def test_an_image_directory_that_is_not_the_stores_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    d = tmp_path / "images"
    s = Store(url, images=str(d))
    Ingestor(s).ingest([msg(1)])
    s.close()
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not this database's image store"):
        Store(url, images=str(tmp_path / "empty"))
    # another database cannot take this one's directory
    with pytest.raises(StoreError, match="holds another database's images"):
        Store(f"sqlite:///{tmp_path / 'other.db'}", images=str(d))
    # a directory with files in it that is no image store is not adopted
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Store(f"sqlite:///{tmp_path / 'third.db'}", images=str(junk))
    # moved: refused until told where it is now, then found there without being told
    d.rename(tmp_path / "moved")
    r = run_edge("retention", "--db", url, "--token", "x")
    assert r.returncode == 2 and "keeps its images in" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    s = Store(url, images=str(tmp_path / "moved"))
    s.close()
    s = Store(url)
    assert s.image(sha256(crop(1))) == crop(1)
    s.close()


def test_two_collectors_with_one_directory_write_each_image_once(store, tmp_path):
    d = tmp_path / "images"
    a, b = Store(store.url, images=str(d)), Store(store.url, images=str(d))
    msgs = [msg(i, NOW - timedelta(minutes=i)) for i in range(300)]
    if store.engine == "sqlite":
        b.close()
        b = a  # one SQLite file, one writer at a time: the same store from two threads

    def run(st, batch):
        ing = Ingestor(st)
        for i in range(0, len(batch), 50):
            ing.ingest(batch[i : i + 50])

    ts = [threading.Thread(target=run, args=(a, msgs)), threading.Thread(target=run, args=(b, list(reversed(msgs))))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert a.one("SELECT COUNT(*) FROM reads")[0] == 300
    named = {f for (f,) in a.query("SELECT file FROM images")}
    assert len(named) == 300 and files_in(d) == named  # one file per image, every one named, none left over
    a.close()
    if b is not a:
        b.close()


KILLER = """
import os, signal, sys
from datetime import timedelta
from edge.collector import images
from edge.collector.ingest import Ingestor
from edge.collector.store import Store
from edge.collector.governance import Governance, Policy
from tests.test_collector import NOW
from tests.test_image_store import msg

where, url, d = sys.argv[1], sys.argv[2], sys.argv[3]
if where == "write":  # the files are durable, the transaction naming them is not committed yet
    orig = images.ImageDir.write
    def write(self, files):
        orig(self, files)
        os.kill(os.getpid(), signal.SIGKILL)
    images.ImageDir.write = write
    Ingestor(Store(url, images=d)).ingest([msg(50, NOW, "LOST555")])
else:  # retention committed its deletes, and is killed before it unlinks a file
    def unlink(self, names):
        if list(names):
            os.kill(os.getpid(), signal.SIGKILL)
        return 0
    images.ImageDir.unlink = unlink
    gov = Governance(Store(url, images=d), Policy(retention_days=30, require_ack=False), clock=lambda: NOW.timestamp())
    gov.retention()
print("not killed")
"""


def test_kill_9_mid_write_and_mid_retention_loses_nothing_committed_and_leaves_nothing(store, tmp_path):
    d = tmp_path / "images"
    s = Store(store.url, images=str(d))
    Ingestor(s).ingest([msg(1, NOW - timedelta(days=40), "OLD1111"), msg(2, NOW, "NEW2222")])
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(script), "write", store.url, str(d)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert s.one("SELECT COUNT(*) FROM reads WHERE plate = 'LOST555'")[0] == 0  # never committed
    orphan = {f for f in files_in(d) if sha256(crop(50)) in f}
    assert len(orphan) == 1  # its file was written: no row names it
    # an hour on, retention's sweep removes it; the committed reads' files are untouched
    age(d, 2 * 3600)
    gov, clock = setup_gov(s)
    detail = gov.retention()
    assert detail["image_files_swept"] == 1 and not (files_in(d) & orphan)
    assert s.image(sha256(crop(2))) == crop(2)
    # the store takes the lost read when its device sends it again
    Ingestor(s).ingest([msg(50, NOW, "LOST555")])
    assert s.image(sha256(crop(50))) == crop(50)

    Ingestor(s).ingest([msg(3, NOW - timedelta(days=45), "OLD3333")])
    r = subprocess.run([sys.executable, str(script), "retention", store.url, str(d)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert s.one("SELECT COUNT(*) FROM reads WHERE plate = 'OLD3333'")[0] == 0  # its delete committed, and was audited
    assert json.loads(s.one("SELECT detail FROM audit WHERE action = 'retention.delete' ORDER BY seq DESC LIMIT 1")[0])["image_files"] == 1
    trash = {f for (f,) in s.query("SELECT file FROM image_trash")}
    assert len(trash) == 1 and trash <= files_in(d)  # ... and its file is still to unlink, noted
    detail = gov.retention()
    assert detail["image_files_unlinked"] == 1 and not (files_in(d) & trash)
    assert s.one("SELECT COUNT(*) FROM image_trash")[0] == 0
    named = {f for (f,) in s.query("SELECT file FROM images")}
    assert files_in(d) == named
    s.close()
