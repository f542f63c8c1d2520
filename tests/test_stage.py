"""The recognition path's shape: one plate stage, one region table, the tracker's questions, one assembly,
a health registry the heartbeat can always read."""

import socket
import threading
import time

import cv2
import numpy as np
import pytest

from edge.plates import REGION_CODES, REGIONS, fold, rules_for
from edge.tracking import Observation, Tracker
from edge.vision.reader import TextRead

from .conftest import DATA, ROOT, device_config, make_stage, run_edge

CLIP = ROOT / "fixtures" / "videos" / "01_gate_day.mp4"


def gate_frame():
    cap = cv2.VideoCapture(str(CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 150)
    ok, frame = cap.read()
    assert ok
    return frame


# ------------------------------------------------------------------ the stage


def test_one_frame_gives_one_candidates_value_with_a_mask_per_step(video_stage, stage):
    """The same frame through the video stage and the still stage: the same boxes, the same reads; the
    masks say why a box was or was not reported."""
    frame = gate_frame()
    v, s = video_stage.process(frame), stage.process(frame)
    assert len(v) == len(s) >= 1
    assert np.array_equal(v.boxes, s.boxes) and v.boxes.dtype == np.float32 and v.boxes.shape == (len(v), 4)
    for c in (v, s):
        for mask in (c.band, c.small, c.cut, c.over_budget, c.read, c.accepted):
            assert mask.dtype == bool and mask.shape == (len(c),)
        assert not (c.accepted & ~c.read).any()  # nothing settled without a tracker
        assert c.detect_ms > 0 and (c.read_ms > 0) == bool(c.read.any())
    plates = s.plates()
    assert plates and plates[0].text == [r.text for r in v.reads if r is not None][0]
    assert [p.text for p in plates] == [p.text for p in stage.recognize(frame)]


def test_a_settled_box_is_reported_with_its_tracked_read_and_not_read_again(video_stage):
    frame = gate_frame()
    first = video_stage.process(frame)
    i = int(np.flatnonzero(first.accepted)[0])
    known = TextRead("SETTLED1", 0.99, (0.99,) * 8)
    asked = []

    def settled(box):
        asked.append(box)
        return known if abs(box[0] - float(first.boxes[i, 0])) < 1 else None

    c = video_stage.process(frame, settled=settled)
    assert asked and c.settled[i] is known and not c.read[i] and c.accepted[i] and c.text(i) is known
    assert c.reads[i] is None


def test_the_frame_edge_cuts_video_boxes_but_not_stills(video_stage, stage):
    """A plate pushed half out of the frame: video drops the box (read whole in other frames), a still
    image has no other frame and reads it; both mark it cut."""
    frame = gate_frame()
    c = video_stage.process(frame)
    i = int(np.flatnonzero(c.accepted)[0])
    x1, _, x2, _ = c.boxes[i]
    dx = int(frame.shape[1] - x2 + 0.35 * (x2 - x1))
    cut = np.full_like(frame, 90)
    cut[:, dx:] = frame[:, : frame.shape[1] - dx]
    v, s = video_stage.process(cut), stage.process(cut)
    assert v.cut.any() and s.cut.any()
    assert not (v.cut & v.read).any() and (s.cut & s.read).any()


def test_looking_around_a_box_finds_the_plate_there_only(video_stage):
    frame = gate_frame()
    whole = video_stage.process(frame)
    i = int(np.flatnonzero(whole.accepted)[0])
    box = tuple(float(v) for v in whole.boxes[i])
    near = video_stage.process(frame, look=[box])
    from edge.tracking import iou

    assert len(near) >= 1 and max(iou(box, b) for b in near.boxes) >= 0.7 and near.accepted.any()
    far = video_stage.process(frame, look=[(5.0, 5.0, 25.0, 12.0)])
    assert not far.accepted.any()


def test_misfits_are_read_again_in_video_too():
    """One policy: with plate formats named, the video stage reads a misfit from shifted cuts as stills do."""
    render = pytest.importorskip("models.train.render", reason="renderer needs the [train] extra (Pillow)")
    for still in (False, True):
        st = make_stage(still=still, regions=["br"], refine=False)
        assert st.settings.reread_misfits
        fixed = 0
        for seed in range(8):
            p = render.render_plate(np.random.default_rng(seed), "br")
            h, w = p.image.shape[:2]
            frame = np.full((h * 4, w * 3, 3), 100, np.uint8)
            frame[h : 2 * h, w : 2 * w] = p.image[..., ::-1]
            box = np.array([[w + 0.18 * w, h, 2 * w, 2 * h]], np.float32)
            _, reads, again = st.read_boxes(frame, box)
            fixed += again > 0 and reads[0].text == p.text
        assert fixed >= 1, still
    off = make_stage(regions=["br"], reread_misfits=False)
    assert off.read_boxes(gate_frame(), np.array([[10, 10, 60, 30]], np.float32))[2] == 0


# ------------------------------------------------------------------ one table of regions


def test_the_config_the_reader_and_the_eval_take_their_regions_from_one_table():
    from edge.config import PipelineSection

    assert REGION_CODES == tuple(sorted(REGIONS)) == ("br", "eu", "uk", "us")
    assert PipelineSection.model_json_schema()["properties"]["regions"]["items"]["enum"] == list(REGION_CODES)
    for code in REGION_CODES:
        assert PipelineSection(regions=[code]).regions == [code]
        assert REGIONS[code].name
    with pytest.raises(ValueError, match=r"unknown region 'mars' \(known: br, eu, uk, us\)"):
        PipelineSection(regions=["mars"])
    r = run_edge("eval", str(DATA / "scenes"), "--out", "/dev/null", "--region", "mars")
    assert r.returncode == 2 and "--region: unknown region 'mars'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_one_plate_length_rule():
    from edge.plates import PLATE_MAX_CHARS, PLATE_MIN_CHARS
    from edge.record import Plate

    assert (PLATE_MIN_CHARS, PLATE_MAX_CHARS) == (2, 10)
    assert Plate.model_json_schema()["properties"]["text"]["maxLength"] == PLATE_MAX_CHARS
    assert rules_for(()).length_range(4) == (4, 10)
    assert rules_for(("br",)).length_range(4) == (7, 7) and rules_for(("us",)).length_range(4) == (4, 8)
    assert rules_for(("uk", "us")).length_range(4) == (4, 8) and rules_for(("br", "eu")).length_range(4) == (4, 10)
    assert rules_for(()).length_range(4, model_max=6) == (4, 6)  # what the reader model can write
    assert rules_for(()).length_range(1) == (2, 10)  # never outside what a record carries


def test_one_lookalike_table_for_the_reader_the_collector_and_the_lenient_score():
    from edge.collector.ingest import fuzzy_key
    from edge.evaluate import normalize
    from edge.plates import TO_DIGIT, TO_LETTER

    assert TO_DIGIT["O"] == "0" and TO_LETTER["0"] == "O" and TO_LETTER["1"] == "I" and "A" not in TO_DIGIT
    for a, b in (("ABC0123", "ABCO123"), ("LS15EBC", "L5I5E8C"), ("ZZ", "22")):
        assert fuzzy_key(a) == fuzzy_key(b) == fold(a) == normalize(a, lenient=True) == normalize(b, lenient=True)
    assert fold("G6") != fold("66")  # only the folded pairs read alike in search


# ------------------------------------------------------------------ the tracker's questions


def obs(text, box, t, seq=0, conf=0.97):
    return Observation(text, conf, (conf,) * len(text), box, t, frame_seq=seq, frame_size=(1280, 720))


def test_the_tracker_answers_the_frame_loops_questions_from_plain_lists():
    tr = Tracker()
    assert not tr.busy and tr.look_around(0.0) == [] and tr.first_open_frame() is None
    box = (100.0, 100.0, 200.0, 130.0)
    for k in range(4):
        tr.update([obs("ABC123", (box[0] + 10 * k, box[1], box[2] + 10 * k, box[3]), k * 0.04, seq=7 + k)], k * 0.04)
    assert tr.busy and tr.first_open_frame() == 7
    (pred,) = tr.look_around(0.16)
    assert pred[0] == pytest.approx(140.0)  # constant velocity: 10 px a frame
    assert tr.look_around(5.0) == []  # unseen past max_gap_s: nowhere to look
    last = (130.0, 100.0, 230.0, 130.0)
    assert tr.settled(last, 4, 0.9).text == "ABC123"
    assert tr.settled(last, 5, 0.9) is None  # not read that many frames yet
    assert tr.settled(last, 4, 0.99) is None  # not every character that sure
    assert tr.settled((600.0, 400.0, 700.0, 430.0), 4, 0.9) is None  # another place
    assert tr.settled(last, 0, 0.9) is None  # settling off
    assert [p.text for p in tr.flush()] == ["ABC123"] and tr.first_open_frame() is None


# ------------------------------------------------------------------ health and the heartbeat


def test_the_health_registry_is_safe_from_other_threads_and_survives_a_broken_part():
    from edge.runtime.health import Health

    h = Health("dev")
    h.provide("gps", lambda: "ok")
    h.provide("broken", lambda: 1 / 0)
    stop = threading.Event()

    def counting():
        while not stop.is_set():
            h.count("processed")
            h.time("detect_ms", 1.0)

    th = threading.Thread(target=counting)
    th.start()
    try:
        snaps = [h.snapshot() for _ in range(200)]
    finally:
        stop.set()
        th.join()
    assert snaps[-1]["gps"] == "ok" and snaps[-1]["broken"] == {"error": "ZeroDivisionError: division by zero"}
    seen = [s["frames"].get("processed", 0) for s in snaps]
    assert seen == sorted(seen) and h["processed"] >= seen[-1] > 0


def test_a_heartbeat_whose_status_fails_keeps_petting_the_watchdog(tmp_path, monkeypatch):
    from edge.runtime.health import Health
    from edge.runtime.runner import Runner, RunOptions
    from edge.runtime.systemd import SdNotify

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(3)
    sd = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # a ping every 0.1 s

    class Loop:  # what the heartbeat reads of the frame loop
        stop_event = threading.Event()
        health = Health("dev")

        class frames:
            @staticmethod
            def qsize():
                return 0

    def broken():
        raise RuntimeError("status source gone")

    monkeypatch.setattr(Loop.health, "snapshot", broken)
    th = threading.Thread(target=Runner(device_config(), RunOptions())._heartbeat, args=(sd, Loop), daemon=True)
    th.start()
    got = []
    t0 = time.monotonic()
    while len(got) < 3 and time.monotonic() - t0 < 3:
        got.append(srv.recv(200))
    Loop.stop_event.set()
    th.join(2)
    assert got == [b"WATCHDOG=1"] * 3


# ------------------------------------------------------------------ one assembly


def test_bench_measures_the_configured_pipeline_and_says_what_it_ran(tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text('[device]\nid = "gate-1"\n[camera]\nid = "cam"\nowner = "Example Transport Authority"\n'
                   '[pipeline]\nregions = ["uk"]\nint8 = "reader"\nmotion_gate = false\nfull_detect_every = 2\n')
    r = run_edge("bench", str(CLIP), "--config", str(cfg), "--frames", "40", "--repeats", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "plate_detector.onnx + plate_reader.int8.onnx + plate_refiner.onnx" in r.stdout
    assert "regions          uk" in r.stdout and "reread misfits on" in r.stdout
    assert "motion gate off" in r.stdout and "whole frame every 2" in r.stdout
    r = run_edge("bench", str(CLIP), "--config", str(cfg), "--frames", "40", "--repeats", "1", "--int8", "none",
                 "--no-refine", timeout=300)
    assert r.returncode == 0 and "plate_detector.onnx + plate_reader.onnx (" in r.stdout and "refine off" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "gate-1"\n[camera]\nid = "cam"\nowner = "x"\n[pipeline]\nregions = ["mars"]\n')
    r = run_edge("bench", str(CLIP), "--config", str(bad))
    assert r.returncode == 2 and "pipeline.regions: unknown region 'mars'" in r.stderr
