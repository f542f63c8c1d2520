"""Bad inputs a user types, walked one by one: each is one line on stderr naming the flag, key or file,
with the exit code of the README's table (2 arguments or configuration, 3 camera or video, 5 models),
no traceback and no library noise."""

import pytest

from .conftest import DATA, ROOT, collector_users, run_edge

CLIP = ROOT / "fixtures" / "videos" / "01_gate_day.mp4"
SCENE = DATA / "scenes" / "synthetic" / "scene000.jpg"


def one_clean_line(r, code: int, *needles: str) -> None:
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr and "[ WARN" not in r.stderr and "@ 0x" not in r.stderr
    for n in needles:
        assert n in err[0], (n, err[0])


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collector")
    db = f"sqlite:///{tmp / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    sam, ann = t["sam"], t["ann"]
    assert run_edge("cases", "open", "K-1", "--token", sam, "--db", db).returncode == 0
    return db, ann


@pytest.mark.parametrize("flags,needle", [
    (["--near", "a,b,c"], "--near needs 3 comma-separated numbers, got 'a,b,c'"),
    (["--near", "1,2"], "--near needs 3"),
    (["--box", "1,2,3,x"], "--box needs 4"),
    (["--from", "yesterday"], "--from: 'yesterday' is not an ISO 8601 time"),
    (["--to", "2026-11-27T10:00:00"], "--to: '2026-11-27T10:00:00' needs a UTC offset"),
    (["--limit", "-1"], "--limit: expected 1 to 5000 reads, got -1"),
    (["--limit", "0"], "--limit: expected 1 to 5000"),
])
def test_query_flags_are_named_in_their_error(collector, flags, needle):
    db, ann = collector
    one_clean_line(run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--db", db, *flags), 2, needle)


def test_a_bad_video_is_exit_3_for_replay_and_bench_alike(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 2048)
    for video, needle in ((tmp_path / "missing.mp4", "not found"), (junk, "cannot")):
        for cmd in (["replay", str(video), "--fast"], ["bench", str(video)]):
            one_clean_line(run_edge(*cmd, cwd=tmp_path), 3, needle)


def test_missing_models_are_exit_5_for_every_command(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[device]\nid = "d"\nstate_dir = "{tmp_path}/state"\n[camera]\nid = "c"\nowner = "o"\n'
                   f'[pipeline]\nmodel_dir = "{empty}"\n')
    for cmd in (["eval", str(DATA / "scenes"), "--out", str(tmp_path / "p.jsonl"), "--models", str(empty)],
                ["eval", "--crops", str(DATA / "crops"), "--models", str(empty)],
                ["read", str(SCENE), "--models", str(empty)],
                ["bench", str(CLIP), "--models", str(empty)],
                ["replay", str(CLIP), "--fast", "--config", str(cfg), "--no-mqtt"]):
        one_clean_line(run_edge(*cmd, cwd=tmp_path), 5, "model file not found", str(empty))


def test_a_truncated_video_warns_and_keeps_what_it_read(tmp_path):
    cut = tmp_path / "cut.mp4"
    data = CLIP.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    r = run_edge("replay", str(cut), "--fast", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warn = [x for x in r.stderr.splitlines() if "WARNING" in x]
    assert len(warn) == 1 and "truncated or damaged" in warn[0] and "of its 200 frames" in warn[0]
    assert "75S798C" in r.stdout  # the plate in the part that is there is still read


def test_bad_numbers_and_regions_name_their_flag():
    one_clean_line(run_edge("eval", "--crops", str(DATA / "crops"), "--threads", "0"), 2, "--threads")
    one_clean_line(run_edge("read", str(SCENE), "--min-confidence", "1.5"), 2, "--min-confidence")
    one_clean_line(run_edge("bench", str(CLIP), "--region", "zz"), 2, "--region: unknown region 'zz'")
