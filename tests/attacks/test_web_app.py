"""The investigators' web app in a real browser (Debian's chromium and chromium-driver, headless, driven
by Selenium) against a real `edge collect --http` holding reads a device replayed over the shipped
broker: search, an approval in the queue, the movement history on the map; a viewer, an admin; a
form without its CSRF token, a signed-out cookie, an idle one and one from another browser refused;
labelled fields and keyboard use checked in the browser's accessibility tree. Screenshots of each
step go to out/web/."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from edge.collector.store import Store

from ..broker import free_port
from ..conftest import ROOT, collector_users, run_edge
from .test_devices import Collector, replay

SHOTS = ROOT / "out" / "web"


def browser(tmp: Path, name: str):
    if not shutil.which("chromedriver") or not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        pytest.skip("chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    o = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp / name}",
              "--window-size=1280,1400", "--no-first-run", "--disable-background-networking"):
        o.add_argument(a)
    o.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    d.set_page_load_timeout(30)
    return d


def shot(d, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(d, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(base + "/signin")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(d, 20).until(lambda d: d.execute_script("return document.readyState") == "complete"
                               and (not d.current_url.endswith("/signin") or d.find_elements(By.CSS_SELECTOR, ".msg")))


def search(d, base: str, case: str, plate: str | None = None, days: str = "1", approval: str = "", camera: str = "") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d.get(base + "/search")
    Select(d.find_element(By.ID, "case")).select_by_value(case)
    if plate is not None:
        d.find_element(By.ID, "plate").send_keys(plate)
    if camera:
        d.find_element(By.ID, "camera").send_keys(camera)
    days_f = d.find_element(By.ID, "days")
    days_f.clear()
    days_f.send_keys(days)
    if approval:
        f = d.find_element(By.ID, "approval")
        f.clear()
        f.send_keys(approval)
    d.find_element(By.ID, "ack").click()
    click_and_wait(d, d.find_element(By.ID, "run"))


def click_and_wait(d, el) -> None:
    """Click what submits a form, and wait until the page it leads to has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_element(By.TAG_NAME, "html")
    el.click()
    WebDriverWait(d, 30).until(ec.staleness_of(old))
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def post(base: str, path: str, cookies: dict[str, str], data: dict) -> tuple[int, str, str]:
    """A POST as a script (or a forging page) would send it: (status, Location, body)."""
    req = urllib.request.Request(base + path, data=urllib.parse.urlencode(data).encode(), method="POST",
                                 headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                                          "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=20) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.read().decode()


def test_the_web_app_in_a_browser_under_the_same_rules(tmp_path, pki, broker):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    col = Collector(tmp_path, broker, pki, "--http", f"127.0.0.1:{port}").start()
    base = f"http://127.0.0.1:{port}"
    drivers = []
    try:
        tok = collector_users(col.db, env=col.env, ann="investigator", sam="supervisor", vic="viewer")
        assert run_edge("cases", "open", "CASE-9", "--title", "stolen van", "--db", col.db, "--token", tok["sam"], env=col.env).returncode == 0
        r = replay(pki, "dev-a", tmp_path, broker.port, "--flush-timeout", "60",
                   env_extra={"EDGE_GPS__MODE": "fixed", "EDGE_GPS__LAT": "47.07", "EDGE_GPS__LON": "15.44"})
        assert r.returncode == 0, r.stderr
        assert len(col.wait_reads(3)) == 3
        ann, sam = browser(tmp_path, "ann"), browser(tmp_path, "sam")
        drivers += [ann, sam]

        # an investigator searches one day of a plate and sees its read with the crop
        sign_in(ann, base, tok["ann"])
        assert ann.current_url.endswith("/search")
        shot(ann, "1-search-form")
        search(ann, base, "CASE-9", "DW03NTE")
        rows = ann.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert len(rows) == 1 and "DW03NTE" in rows[0].text, ann.page_source[-2000:]
        crop = rows[0].find_element(By.CSS_SELECTOR, "img.crop")
        assert ann.execute_script("return arguments[0].naturalWidth", crop) > 20  # the crop decodes in the browser
        assert "Use policy" in ann.page_source and len(ann.find_elements(By.CSS_SELECTOR, "svg.map circle.pt")) == 1
        shot(ann, "2-one-day")
        # the page without its images is small
        html = ann.page_source
        import re

        lean = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", html)
        css, js = (ROOT / "edge/collector/web/static/app.css").stat().st_size, (ROOT / "edge/collector/web/static/map.js").stat().st_size
        assert len(lean.encode()) + css + js <= 300_000

        # ... asks for 30 days and is told an approval is needed
        search(ann, base, "CASE-9", "DW03NTE", days="30")
        request = ann.find_element(By.ID, "request").text
        assert request.startswith("APR-") and "approv" in ann.find_element(By.CSS_SELECTOR, ".msg").text
        shot(ann, "3-approval-needed")
        # a supervisor sees it in the queue and approves it
        sign_in(sam, base, tok["sam"])
        sam.get(base + "/approvals")
        assert request in sam.find_element(By.ID, "queue").text
        sam.find_element(By.CSS_SELECTOR, f"button[aria-label='approve {request}']").click()
        assert f"approved {request}" in sam.page_source
        shot(sam, "4-approved")
        # the investigator sees the movement history on the map
        search(ann, base, "CASE-9", "DW03NTE", days="30", approval=request)
        assert "movement history" in ann.find_element(By.CSS_SELECTOR, "#results caption").text
        assert ann.find_elements(By.CSS_SELECTOR, "svg.map circle.pt")
        shot(ann, "5-history")
        # the read itself, opened from the search that showed it
        search(ann, base, "CASE-9", "DW03NTE")
        click_and_wait(ann, ann.find_element(By.CSS_SELECTOR, "#results button"))
        assert "DW03NTE" in ann.find_element(By.TAG_NAME, "h1").text and "Owner" in ann.page_source
        shot(ann, "6-read")

        # a request denied with a reason leaves the queue
        search(ann, base, "CASE-9", "FR01544", days="30")
        other = ann.find_element(By.ID, "request").text
        sam.get(base + "/approvals")
        sam.find_element(By.ID, f"reason-{other}").send_keys("no link to the case shown")
        sam.find_element(By.CSS_SELECTOR, f"button[aria-label='deny {other}']").click()
        WebDriverWait(sam, 20).until(lambda d: f"denied {other}" in d.page_source)
        assert other not in sam.find_element(By.ID, "queue").text
        # a hotlist alert of the case, shown and acknowledged in the alerts page
        from edge.collector.governance import Governance
        from edge.collector.hotlist import Alerts, Hotlists

        s = Store(col.db)
        gov = Governance(s)
        h = Hotlists(gov)
        entry = h.propose("ann", "CASE-9", "DW03NTE", "van reported stolen")
        h.approve("sam", entry)
        rec = json.loads(s.one("SELECT record FROM reads WHERE plate = 'DW03NTE'")[0])
        rec["images"] = {}
        rec["read_id"] = rec["read_id"][:-4] + "beef"
        alert = {"schema": "lpr.alert/1", "alert_id": rec["read_id"], "entry": entry, "kind": "exact", "bundle": 1,
                 "first_read": rec["time"], "seen": rec["time"], "read": rec}
        with s.tx():
            assert Alerts(gov).ingest("lpr/v1/dev-a/alerts", json.dumps(alert).encode(), gov.now_ms())[1] == "stored"
        s.close()
        ann.get(base + "/alerts?case=CASE-9")
        assert "DW03NTE" in ann.find_element(By.ID, "alerts").text
        ann.find_element(By.ID, "note-1").send_keys("stopped at lane 2")
        ann.find_element(By.CSS_SELECTOR, "#alerts button").click()
        WebDriverWait(ann, 20).until(lambda d: "acknowledged" in d.page_source and "ann: stopped at lane 2" in d.page_source)
        shot(ann, "6b-alerts")

        # cases in the browser: a supervisor opens and closes one, an investigator holds a read for another
        sam.get(base + "/cases")
        sam.find_element(By.ID, "newcase").send_keys("CASE-10")
        sam.find_element(By.ID, "title").send_keys("convoy")
        sam.find_element(By.CSS_SELECTOR, "form.card button").click()
        WebDriverWait(sam, 20).until(lambda d: "case CASE-10: open" in d.page_source)
        sam.find_element(By.CSS_SELECTOR, "button[aria-label='close case CASE-10']").click()
        WebDriverWait(sam, 20).until(lambda d: "case CASE-10: close" in d.page_source)
        held = col.reads()[0][0]
        ann.get(base + "/cases")
        ann.find_element(By.ID, "holdcase").send_keys("CASE-9")
        ann.find_element(By.ID, "reads").send_keys(held)
        ann.find_element(By.CSS_SELECTOR, "form.card button").click()
        WebDriverWait(ann, 20).until(lambda d: "1 read(s) held for CASE-9" in d.page_source)
        assert not ann.find_elements(By.ID, "newcase")  # only supervisors open cases
        shot(sam, "6c-cases")

        # labelled fields and the keyboard: every field the search form has is named in the accessibility tree
        ann.get(base + "/search")
        tree = ann.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
        fields = [n for n in tree if n.get("role", {}).get("value") in ("textbox", "combobox", "checkbox", "spinbutton")]
        assert len(fields) >= 10 and all(n.get("name", {}).get("value") for n in fields), [n.get("name") for n in fields]
        body = ann.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        seen = []
        for _ in range(40):
            el = ann.switch_to.active_element
            seen.append(el.get_attribute("id") or el.tag_name)
            el.send_keys(Keys.TAB)
        assert {"case", "plate", "ack", "run"} <= set(seen), seen

        # a viewer sees counts and passes, no plate text and no image
        vic = browser(tmp_path, "vic")
        drivers.append(vic)
        sign_in(vic, base, tok["vic"])
        assert not vic.find_elements(By.ID, "plate")  # no plate field at all
        search(vic, base, "CASE-9", camera="dev-a-cam")
        text = vic.find_element(By.ID, "results").text
        assert "(withheld)" in text and "DW03NTE" not in vic.page_source and not vic.find_elements(By.CSS_SELECTOR, "img.crop")
        shot(vic, "7-viewer")
        search(vic, base, "CASE-9", camera="dev-a-cam", days="30")  # a wider search: counts per camera only
        assert "Reads per camera" in vic.page_source and "dev-a-cam" in vic.page_source and "DW03NTE" not in vic.page_source
        # an admin cannot search
        sign_in(vic, base, tok["root"])
        assert vic.current_url.endswith("/audit") and vic.find_element(By.ID, "verified")
        status, _, page = post(base, "/search", {c["name"]: c["value"] for c in vic.get_cookies()},
                               {"csrf": "x", "case": "CASE-9", "plate": "DW03NTE", "days": "1", "ack": "yes"})
        assert status == 403
        shot(vic, "8-admin-audit")

        # attacks: a form without its CSRF token, a cookie signed out, idle, or from another browser
        jar = {c["name"]: c["value"] for c in ann.get_cookies()}
        for token in ({}, {"csrf": "forged"}):
            status, _, page = post(base, "/search", jar, {**token, "case": "CASE-9", "plate": "DW03NTE", "days": "1", "ack": "yes"})
            assert status == 403 and "security token" in page and "DW03NTE" not in page
        csrf = ann.find_element(By.NAME, "csrf").get_attribute("value")
        ok = post(base, "/search", jar, {"csrf": csrf, "case": "CASE-9", "plate": "DW03NTE", "days": "1", "ack": "yes"})
        assert ok[0] == 200 and "DW03NTE" in ok[2]  # the same request with the token: the refusals above were the token's
        sam_jar = {c["name"]: c["value"] for c in sam.get_cookies()}
        ann.delete_cookie("edge_session")
        ann.add_cookie({"name": "edge_session", "value": sam_jar["edge_session"], "path": "/"})
        ann.get(base + "/approvals")
        assert "/signin" in ann.current_url and "another browser" in ann.page_source  # sam's cookie in ann's browser
        sam.get(base + "/approvals")
        assert "/signin" in sam.current_url  # and that session is ended for good
        sign_in(ann, base, tok["ann"])
        jar = {c["name"]: c["value"] for c in ann.get_cookies()}
        ann.find_element(By.CSS_SELECTOR, "form.who button").click()  # sign out
        WebDriverWait(ann, 20).until(lambda d: "/signin" in d.current_url)
        assert "signed out" in ann.page_source
        status, where, _ = post(base, "/search", jar, {"csrf": csrf, "case": "CASE-9", "plate": "DW03NTE"})
        assert status == 303 and "/signin" in where and "signed+out" in where
        sign_in(ann, base, tok["ann"])
        s = Store(col.db)
        s.execute("UPDATE web_sessions SET seen = seen - 3600000 WHERE ended IS NULL")  # an hour without use
        s.close()
        ann.get(base + "/search")
        assert "/signin" in ann.current_url and "expired" in ann.page_source
        shot(ann, "9-expired")
        # failed sign-ins are audited and, ten in a minute, refused
        for _ in range(10):
            sign_in(vic, base, "lpr_not-a-token")
        sign_in(vic, base, tok["vic"])
        assert "Too many failed sign-ins" in vic.page_source
        s = Store(col.db)
        actions = [a for (a,) in s.query("SELECT action FROM audit")]
        s.close()
        assert actions.count("login.failed") >= 10 and "session.refused" in actions and "web.csrf_refused" in actions
        # the JSON API is still there, with its schema
        with urllib.request.urlopen(base + "/openapi.json", timeout=10) as r:
            schema = json.loads(r.read())
        assert "/v1/reads" in schema["paths"] and "/v1/hotlist/{ref}/approve" in schema["paths"]
    finally:
        for d in drivers:
            d.quit()
        col.stop()


def test_the_web_app_over_https_with_secure_cookies_and_pages_of_results(tmp_path, pki, broker):
    import ssl

    from edge.collector.ingest import Ingestor

    from ..test_collector import good

    port = free_port()
    col = Collector(tmp_path, broker, pki, "--http", f"127.0.0.1:{port}", "--http-cert", str(pki / "server" / "server.crt"),
                    "--http-key", str(pki / "server" / "server.key")).start()
    base = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt"))
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=ctx))

    def call(path, data=None, cookies=None):
        req = urllib.request.Request(base + path, data=urllib.parse.urlencode(data).encode() if data is not None else None,
                                     headers={"Cookie": "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())})
        try:
            with opener.open(req, timeout=20) as r:
                return r.status, r.headers.get_all("Set-Cookie") or [], r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get_all("Set-Cookie") or [], e.read().decode()

    try:
        tok = collector_users(col.db, env=col.env, ann="investigator", sam="supervisor")
        assert run_edge("cases", "open", "C-2", "--db", col.db, "--token", tok["sam"], env=col.env).returncode == 0
        s = Store(col.db)
        from datetime import UTC, datetime, timedelta

        when = datetime.now(UTC) - timedelta(minutes=5)
        Ingestor(s).ingest([("lpr/v1/dev-a/reads", good(i, when - timedelta(seconds=i), device="dev-a", camera="cam-p",
                                                        text=f"PG{i:05d}")) for i in range(60)])
        s.close()
        code, cookies, _ = call("/signin")
        assert code == 200 and all({"secure", "httponly", "samesite=strict"} <= {x.strip().lower() for x in c.split(";")} for c in cookies)
        jar = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0] for c in cookies}
        code, cookies, _ = call("/signin", {"token": tok["ann"]}, jar)
        assert code == 303 and all({"secure", "httponly", "samesite=strict"} <= {x.strip().lower() for x in c.split(";")} for c in cookies), cookies
        jar.update({c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0] for c in cookies})
        code, _, page = call("/search", cookies=jar)
        import re

        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        seen = []
        for n in (1, 2):
            code, _, page = call("/search", {"csrf": csrf, "case": "C-2", "camera": "cam-p", "days": "1", "ack": "yes",
                                             "page": str(n)}, jar)
            assert code == 200, page[-500:]
            seen.append(re.findall(r'name="read_id" value="([^"]+)"', page))
        assert [len(x) for x in seen] == [50, 10] and not set(seen[0]) & set(seen[1])  # two pages, nothing twice
        assert 'id="next"' not in page
    finally:
        col.stop()
