"""Fixture clips through the whole pipeline, with the committed models (issue: fixture videos)."""

import json
from pathlib import Path

import pytest

from edge.gps import FixedGps
from edge.record import Read

from .conftest import DATASETS, ROOT, device_config, run_loop

CLIPS = sorted((ROOT / "fixtures" / "videos").glob("*.mp4"))


def truth(clip: Path) -> dict:
    return json.loads(clip.with_suffix(".json").read_text())


def replay(clip: Path, stage, tmp: Path, cfg=None) -> list[Read]:
    """The clip through the frame loop edge.runtime.assembly builds (as `edge replay` runs it)."""
    pl = run_loop(clip, tmp / f"{clip.stem}.db", cfg=cfg, stage=stage, gps=FixedGps(47.0, 15.0))
    assert pl.outbox_backlog == len(pl.reads)  # every read is in the outbox
    return pl.reads


@pytest.fixture(scope="module")
def results(video_stage, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    return {c.name: replay(c, video_stage, tmp) for c in CLIPS}


def test_there_are_at_least_eight_clips_with_sidecars():
    assert len(CLIPS) >= 8
    total = 0
    for c in CLIPS:
        t = truth(c)
        assert t["width"] in (1280, 1920) and 5 <= t["frames"] / t["fps"] <= 15
        for p in t["plates"]:
            assert p["direction"] in ("towards", "away", "unknown") and len(p["boxes"]) > 0
        total += c.stat().st_size
    assert total <= 40 * 1024 * 1024


@pytest.mark.parametrize("clip", CLIPS, ids=[c.stem for c in CLIPS])
def test_clip_reads_every_readable_plate_once_and_nothing_else(results, clip):
    t = truth(clip)
    reads = results[clip.name]
    got = sorted(r.plate.text for r in reads)
    expected = t["expected_reads"]
    hits = sum(min(got.count(x), 1) for x in set(expected))
    recall = hits / len(expected) if expected else 1.0
    precision = hits / len(got) if got else (1.0 if not expected else 0.0)
    print(f"{clip.stem}: recall {recall:.2f} precision {precision:.2f} reads {got} expected {expected}")
    assert got == expected
    by_text = {p["text"]: p for p in t["plates"]}
    for r in reads:
        want = by_text[r.plate.text]
        assert r.track.direction == want["direction"], (r.plate.text, r.track.direction, want["direction"])
        assert r.track.lateral == want["lateral"], (r.plate.text, r.track.lateral, want["lateral"])
        assert r.gps.status == "ok" and r.images.plate_jpeg


def test_real_clip_from_shared_datasets(tmp_path):
    clip = DATASETS / "videos" / "uk-LS15EBC.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} not present")
    want = (clip.parent / (clip.name + ".plates.txt")).read_text().split()
    cfg = device_config(pipeline={"regions": ["uk"], "model_dir": str(ROOT / "models")})  # a UK site names its region
    reads = replay(clip, None, tmp_path, cfg=cfg)
    got = [r.plate.text for r in reads]
    print(f"real clip: reads {got}, truth {want}")
    assert set(want) <= set(got)


def test_a_bad_source_is_one_line_without_library_noise(tmp_path):
    """An unreachable camera and a file that is no video: the one clear line only, exit 3."""
    from .conftest import run_edge

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    for source, what in (("rtsp://127.0.0.1:9/x", "cannot open camera"), (str(bad), "cannot open video")):
        r = run_edge("replay", source, "--outbox", str(tmp_path / "o.db"), timeout=120)
        assert r.returncode == 3, r.stderr
        assert r.stderr.strip().splitlines() == [line for line in r.stderr.strip().splitlines() if line.startswith("edge replay: error:")]
        assert len(r.stderr.strip().splitlines()) == 1 and what in r.stderr, r.stderr
