"""Prometheus metrics and liveness: the device's /metrics during a real replay, parsed with
prometheus-client's parser, counters moving; /healthz without a token; a token when asked for; the
collector's /metrics for supervisors and admins only."""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .broker import free_port, wait_port
from .conftest import ROOT, run_edge

CLIP = ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def device_toml(tmp, port: int, token_file=None) -> str:
    f = tmp / "d.toml"
    f.write_text(f'[device]\nid = "dev-m"\nstate_dir = "{tmp / "state"}"\n[camera]\nid = "c"\nowner = "o"\n'
                 f'[metrics]\nlisten = "127.0.0.1:{port}"\n' + (f'token_file = "{token_file}"\n' if token_file else ""))
    return str(f)


def test_device_metrics_move_during_a_replay(tmp_path):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--loop", "--no-mqtt", "--config",
                          device_toml(tmp_path, port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_port(port, 60), p.stderr.read() if p.poll() is not None else "no metrics port"
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, '{"ok": true}')
        time.sleep(2)
        code, first = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        time.sleep(3)
        second = samples(get(f"http://127.0.0.1:{port}/metrics")[1])
        first_s = samples(first)
        key = ("edge_pipeline_events_total", (("device", "dev-m"), ("event", "processed")))
        assert second[key] > first_s[key] > 0  # frames keep going through
        assert ("edge_outbox_backlog", (("device", "dev-m"),)) in second
        assert second[("edge_gps_status", (("device", "dev-m"), ("status", "missing")))] == 1.0
        buckets = [k for k in second if k[0] == "edge_stage_pipeline_ms_bucket"]
        assert buckets and second[("edge_stage_pipeline_ms_count", (("device", "dev-m"),))] > 0
        assert get(f"http://127.0.0.1:{port}/frames")[0] == 404
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_device_metrics_beyond_loopback_need_a_token(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text(f'[device]\nid = "dev-m"\nstate_dir = "{tmp_path}"\n[camera]\nid = "c"\nowner = "o"\n[metrics]\nlisten = "0.0.0.0:9108"\n')
    r = run_edge("config", "check", str(f))
    assert r.returncode == 2 and "token_file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    port = free_port()
    tok = tmp_path / "metrics.token"
    tok.write_text("s3cret-metrics\n")
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--loop", "--no-mqtt", "--config",
                          device_toml(tmp_path, port, tok)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port, 60)
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 401
        assert get(f"http://127.0.0.1:{port}/metrics", "wrong")[0] == 401
        assert get(f"http://127.0.0.1:{port}/metrics", "s3cret-metrics")[0] == 200
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_collector_metrics_for_supervisors_and_admins(tmp_path):
    from edge.collector.governance import Governance, Policy
    from edge.collector.ingest import Ingestor
    from edge.collector.store import Store

    from .conftest import api_client
    from .test_collector import good

    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    ing = Ingestor(store)
    one = good(1)
    ing.ingest([("lpr/v1/dev-1/reads", one), ("lpr/v1/dev-1/reads", one), ("lpr/v1/dev-1/reads", b"not json")])
    gov = Governance(store, Policy(audit_head_file=tmp_path / "audit.head"))
    toks = {n: gov.add_user("root", n, r) for n, r in (("sam", "supervisor"), ("val", "viewer"), ("adm", "admin"))}
    with api_client(gov) as call:
        base = call.base
        code, text = get(f"{base}/healthz")
        assert (code, json.loads(text)) == (200, {"ok": True})
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", toks["val"])[0] == 403
        code, text = get(f"{base}/metrics", toks["sam"])
        assert code == 200
        s = samples(text)
        assert s[("edge_collector_stored_total", ())] == 1 and s[("edge_collector_duplicate_total", ())] == 1
        assert s[("edge_collector_rejects_total", (("reason", "not JSON"),))] == 1
        assert s[("edge_collector_audit_head_seq", ())] >= 3
        assert get(f"{base}/metrics", toks["adm"])[0] == 200
