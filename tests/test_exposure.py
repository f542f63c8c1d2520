"""Movement histories however the searches are sliced: the exposure budget, wildcards that name a vehicle,
counts only for long camera/site/area searches, viewers without plates, approvals bound to the question."""

from datetime import timedelta

import pytest

from edge.collector.governance import AccessDenied, NeedsApproval
from edge.collector.ingest import Ingestor
from edge.collector.query import Query, search

from .test_collector import NOW, good, setup_gov

DAY_MS = 86_400_000
NOW_MS = int(NOW.timestamp() * 1000)


def day(k: int, **kw) -> Query:
    """The k-th day back from NOW, as one search."""
    return Query(since_ms=NOW_MS - (k + 1) * DAY_MS, until_ms=NOW_MS - k * DAY_MS, **kw)


@pytest.fixture
def seen(store):
    """One plate read at one camera on 3 days of the last 31, and another car beside it each time."""
    ing = Ingestor(store, clock=lambda: NOW.timestamp())
    msgs = []
    for i, k in enumerate((2, 11, 25)):
        t = NOW - timedelta(days=k, hours=6)
        msgs += [("t", good(10 + i, t, "AB12CDE", camera="cam-1", site="north")), ("t", good(20 + i, t, f"ZZ{i}9XYZ", camera="cam-1"))]
    ing.ingest(msgs)
    gov, clock = setup_gov(store)
    return gov, clock


def test_31_one_day_plate_searches_do_not_add_up_to_a_history(seen):
    gov, _ = seen
    found, refused = [], 0
    for k in range(31):
        try:
            found += [r["read_id"] for r in search(gov, "alice", "CASE-1", day(k, plate="AB12CDE"))]
        except NeedsApproval:
            refused += 1
    assert len(found) == 1 and refused == 2  # the first day it was seen; the other two days need a supervisor
    pending = gov.pending("sam")
    assert len(pending) == 2 and all(p[3]["plate"] == "AB12CDE" for p in pending)


def test_fuzzy_and_daily_camera_searches_share_the_plates_budget(seen):
    gov, _ = seen
    assert len(search(gov, "alice", "CASE-1", day(2, plate="AB12CDE"))) == 1
    with pytest.raises(NeedsApproval):
        search(gov, "alice", "CASE-1", day(11, plate="A812CDE", match="fuzzy"))  # the look-alike key is the same plate
    shown, withheld = [], 0
    for k in range(31):
        got = search(gov, "alice", "CASE-1", day(k, camera="cam-1"))
        shown += [r["plate"]["text"] for r in got]
        withheld += got.withheld
    assert shown.count("AB12CDE") == 1 and withheld == 2  # the camera's other days leave that plate out
    assert sorted(t for t in shown if t != "AB12CDE") == ["ZZ09XYZ", "ZZ19XYZ", "ZZ29XYZ"]


def test_long_camera_site_and_area_searches_show_counts_only(seen):
    gov, _ = seen
    for q in (Query(camera="cam-1", since_ms=NOW_MS - 1800 * DAY_MS), Query(site="north"),
              Query(near=(47.0, 15.0, 5.0), since_ms=NOW_MS - 40 * DAY_MS)):
        got = search(gov, "alice", "CASE-1", q)
        assert list(got) == [] and got.counts["reads"] >= 3 and "counts only" in got.note
    assert len(gov.pending("sam")) == 3  # each filed a request a supervisor may approve


def test_a_viewer_sees_that_vehicles_passed_not_which(seen):
    gov, _ = seen
    got = search(gov, "val", "CASE-1", day(2, site="north"))
    assert got and all(r["plate"] == {"withheld": True} and r["images"] == {} for r in got)
    assert "AB12CDE" not in repr(list(got))


@pytest.mark.parametrize("pattern", ["*", "A*", "AB1*", "????CDE*", "AB12*"])
def test_a_wildcard_names_a_vehicle_already_identified(seen, pattern):
    gov, _ = seen
    with pytest.raises(AccessDenied, match="names at least 5 characters"):
        search(gov, "alice", "CASE-1", day(2, plate=pattern))


def test_a_five_character_wildcard_is_a_plate_search(seen):
    gov, _ = seen
    assert [r["plate"]["text"] for r in search(gov, "alice", "CASE-1", day(2, plate="AB12C?E"))] == ["AB12CDE"]


def test_an_approval_binds_the_question_and_a_window_length_not_a_moment(seen):
    """Requested with a 30-day window and re-run later with the same length: it holds; a longer window,
    another plate or another case does not; it is used once, and within 24 h of being granted."""
    gov, clock = seen
    q30 = Query(plate="AB12CDE", since_ms=NOW_MS - 30 * DAY_MS, until_ms=NOW_MS)
    with pytest.raises(NeedsApproval) as e:
        search(gov, "alice", "CASE-1", q30)
    req = e.value.request_id
    gov.approve("sam", req)
    clock[0] += 3600  # an hour later: "the last 30 days" has moved
    later = Query(plate="AB12CDE", since_ms=NOW_MS + 3_600_000 - 30 * DAY_MS, until_ms=NOW_MS + 3_600_000)
    with pytest.raises(AccessDenied, match="covers 30 day"):
        search(gov, "alice", "CASE-1", Query(plate="AB12CDE", since_ms=NOW_MS - 60 * DAY_MS, until_ms=NOW_MS), approval=req)
    with pytest.raises(AccessDenied, match="another user, case or question"):
        search(gov, "alice", "CASE-1", Query(plate="XY99ZZZ", since_ms=later.since_ms, until_ms=later.until_ms), approval=req)
    assert len(search(gov, "alice", "CASE-1", later, approval=req)) == 3
    with pytest.raises(AccessDenied, match="already used"):
        search(gov, "alice", "CASE-1", later, approval=req)
    with pytest.raises(NeedsApproval) as e:
        search(gov, "alice", "CASE-1", later)
    gov.approve("tom", e.value.request_id)
    clock[0] += 25 * 3600
    with pytest.raises(AccessDenied, match="expired"):
        search(gov, "alice", "CASE-1", later, approval=e.value.request_id)


def test_the_cli_approval_with_days_works_on_the_re_run(tmp_path):
    """The CLI's --days 30 asked twice, a minute apart, is the same question for the approval."""
    from .conftest import collector_users, run_edge

    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    sam, ann = t["sam"], t["ann"]
    assert run_edge("cases", "open", "K-1", "--token", sam, "--db", db).returncode == 0
    r = run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "AB12CDE", "--days", "30", "--db", db)
    assert r.returncode == 3 and "APR-" in r.stderr
    req = r.stderr.split("request ")[1].split()[0]
    assert run_edge("approve", req, "--token", sam, "--db", db).returncode == 0
    again = run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "AB12CDE", "--days", "30", "--approval", req, "--db", db)
    assert again.returncode == 0, again.stderr


def test_the_api_answers_every_bad_input_and_records_failed_logins(tmp_path):
    """days=inf used to close the connection unanswered; a wrong token left no trace; now a 400 naming the
    parameter, an audited failure, and past 10 failures from one address a 429."""

    from edge.collector.api import FAIL_LIMIT
    from edge.collector.governance import Governance
    from edge.collector.store import Store

    from .conftest import api_client

    s = Store(f"sqlite:///{tmp_path / 'h.db'}")
    gov = Governance(s)
    tok = gov.add_user("root", "alice", "investigator")
    gov.add_user("root", "sam", "supervisor")
    gov.open_case("sam", "C-9")
    with api_client(gov) as get:
        for q, name in (("days=inf", "days"), ("days=nan", "days"), ("near=nan,1,2", "near"), ("box=1,2,3,inf", "box"),
                        ("limit=1e9", "limit"), ("from=tomorrow", "from")):
            code, body = get(f"/v1/reads?plate=AB12CDE&case=C-9&{q}", tok)
            assert code == 400 and body["error"].startswith(name), (q, code, body)
        for _ in range(FAIL_LIMIT):
            assert get("/v1/reads?case=C-9", "not-a-token")[0] == 401
        assert get("/v1/reads?case=C-9", "not-a-token")[0] == 429
        assert get("/v1/reads?case=C-9&days=0.5", tok)[0] == 429  # that address waits, whoever it is now
        failed = s.query("SELECT detail FROM audit WHERE action = 'login.failed'")
        assert len(failed) == FAIL_LIMIT and "not-a-token" not in repr(failed)


def test_a_token_from_a_file_keeps_it_out_of_the_process_list(tmp_path):
    from .conftest import run_edge

    db = f"sqlite:///{tmp_path / 'c.db'}"
    root = run_edge("users", "add", "root", "--role", "admin", "--bootstrap", "--db", db).stdout.split()[-1]
    f = tmp_path / "root.token"
    f.write_text(root + "\n")
    f.chmod(0o600)
    r = run_edge("users", "list", "--token-file", str(f), "--db", db)
    assert r.returncode == 0 and "root" in r.stdout
    r = run_edge("users", "list", "--token-file", str(tmp_path / "none"), "--db", db)
    assert r.returncode == 2 and "--token-file: cannot read" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_search_shows_the_use_policy_and_records_its_acknowledgement(tmp_path):
    """Visible warnings about valid use: the CLI shows the policy on every search and refuses one not
    acknowledged; the deployment's own text replaces the default; the audit entry names the digest."""
    from edge.collector.store import Store

    from .conftest import collector_users, run_edge

    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    assert run_edge("cases", "open", "K-1", "--token", t["sam"], "--db", db).returncode == 0
    q = ["query", "--token", t["ann"], "--case", "K-1", "--plate", "AB12CDE", "--days", "1", "--db", db]
    r = run_edge(*q)
    assert r.returncode == 2 and "acknowledges the use policy" in r.stderr and "suspected of nothing" in r.stderr
    r = run_edge(*q, "--ack-policy")
    assert r.returncode == 0 and "use policy (" in r.stderr and "suspected of nothing" in r.stderr
    own = tmp_path / "policy.txt"
    own.write_text("Border Agency rule 7: search only for the case named. Misuse is reported.\n")
    env = {**__import__("os").environ, "EDGE_COLLECTOR_USE_POLICY": str(own)}
    r = run_edge(*q, "--ack-policy", env=env)
    assert r.returncode == 0 and "Border Agency rule 7" in r.stderr and "suspected of nothing" not in r.stderr
    acks = [d for (d,) in Store(db).query("SELECT detail FROM audit WHERE action = 'query'")]
    assert len(acks) == 2 and all('"use_policy":"' in d for d in acks) and acks[0] != acks[1]
