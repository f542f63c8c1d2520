"""Strict ingest: what a device with a valid certificate can send that the schema cannot say is refused
with its reason, and a stored read_id sent again with other content is a conflict (a possible
forgery), counted in the health, on SQLite and PostgreSQL."""

import json

import pytest

from edge.collector.ingest import Ingestor

from ..test_collector import good


def mutate(path: str, value):
    """The good record with `path` (dotted) set to `value` (a raw JSON text)."""
    d = json.loads(good(1))
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = "\x00MARK\x00"
    return json.dumps(d).replace('"\\u0000MARK\\u0000"', value).encode()


@pytest.mark.parametrize("path,value,reason", [
    ("plate.box.x1", "NaN", "plate.box.x1"),
    ("gps.alt_m", "Infinity", "gps.alt_m"),
    ("gps.alt_m", "-Infinity", "gps.alt_m"),
    ("track.frames", "1" * 30, "track.frames"),
    ("plate.box.x2", "1e308", "plate.box.x2"),
    ("track.frames", '"12"', "track.frames"),
    ("plate.confidence", '"0.9"', "plate.confidence"),
    ("images.plate_jpeg", "null", "null at images.plate_jpeg"),
    ("camera.owner", json.dumps("Agency\n2026-12-01 12:00 FORGED1 conf 1.00"), "control"),
    ("camera.site", json.dumps("north\r"), "control"),
    ("camera.site", json.dumps("north\u2028gate"), "unprintable"),
    ("camera.owner", json.dumps("A\u202egency"), "unprintable"),
    ("camera.id", json.dumps("cam\t1"), "control"),
])
def test_what_the_schema_cannot_say_is_refused(store, path, value, reason):
    ing = Ingestor(store)
    res = ing.ingest([("lpr/v1/dev-1/reads", mutate(path, value))])
    assert res.rejected == 1 and res.stored == 0, (path, value)
    (why,) = store.one("SELECT reason FROM rejects")
    assert reason in why, why


def test_a_reused_read_id_with_other_content_is_a_conflict(store):
    ing = Ingestor(store)
    first = good(1, text="AB12CDE")
    assert ing.ingest([("lpr/v1/dev-1/reads", first)]).stored == 1
    assert ing.ingest([("lpr/v1/dev-1/reads", first)]).duplicate == 1  # a re-send: harmless
    forged = json.loads(first)
    forged["plate"]["text"] = "XY99ZZZ"
    res = ing.ingest([("lpr/v1/dev-1/reads", json.dumps(forged).encode())])
    assert res.conflict == 1 and res.duplicate == 0 and res.outcomes[0][2] == "conflict"
    (why,) = store.one("SELECT reason FROM rejects")
    assert why.startswith("conflict")
    assert ing.health()["conflict"] == 1
    assert store.one("SELECT plate FROM reads")[0] == "AB12CDE"  # what was stored stays
