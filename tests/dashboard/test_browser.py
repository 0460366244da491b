"""The dashboard in a real browser: the real ``skivi dashboard`` process against the real
PostgreSQL, with jobs in every state (tests/support/dashboard.py), driven by Debian's headless
Chromium through Selenium. One browser for the module; the tests run in file order and each
changes only jobs of its own.

Screenshots of every page go to .artifacts/dashboard/ (git-ignored); with
``SKIVI_UPDATE_SCREENSHOTS=1`` those of the overview and the jobs page are also copied to
docs/images/, the README's pictures.
"""

from __future__ import annotations

import json
import os
import shutil
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.dashboard import XSS_ERROR, XSS_PAYLOAD, XSS_TASK, DashboardProc, Seeded
from tests.support.wait import wait_for

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".artifacts" / "dashboard"
README_IMAGES = REPO / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("SKIVI_UPDATE_SCREENSHOTS") == "1"


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def _open(driver: Any, dashboard: DashboardProc, path: str) -> None:
    driver.get(dashboard.base + path)
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete",
             what=f"{path} to load")


def _text(driver: Any, css: str) -> str:
    """The element's text; found again if the live refresh swapped it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            text: str = driver.find_element(_by().CSS_SELECTOR, css).text
            return text
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept being replaced")


def _click(driver: Any, css: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            driver.find_element(_by().CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept being replaced")


def _shoot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The whole page, not only the first screenful.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 40, 2400)))
    assert driver.save_screenshot(str(path)), f"no screenshot of {name}"
    driver.set_window_size(1280, 900)
    return path


def _job_state(url: str, job_id: int) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select case when locked_by is not null then 'claimed'"
            " when attempts > 0 and last_error is not null then 'failed'"
            " when run_at > now() then 'scheduled' else 'waiting' end"
            " from skivi.job_live where id = %s", [job_id]).fetchone()
    return None if row is None else str(row[0])


def test_every_page_loads_with_what_it_shows_when_browsed(
        driver: Any, dashboard: DashboardProc, seeded: Seeded) -> None:
    by = _by()
    pages = {
        "overview": ("/", "Overview"),
        "jobs": ("/jobs", "Jobs"),
        "job": (f"/jobs/{seeded.failed}", f"Job {seeded.failed}"),
        "history": ("/history", "History"),
        "queues": ("/queues", "Queues"),
        "engines": ("/engines", "Engines"),
        "cron": ("/cron", "Cron"),
    }
    shots = {}
    for name, (path, heading) in pages.items():
        _open(driver, dashboard, path)
        assert _text(driver, "h1").startswith(heading), f"{name}: {_text(driver, 'h1')!r}"
        shots[name] = _shoot(driver, name)
        body = _text(driver, "main")
        if name == "overview":
            # 3 send_email + 2 resize runnable now; the rest are elsewhere.
            assert _text(driver, "#count-waiting .n") == "5"
            assert _text(driver, "#count-running .n") == "1"
            assert _text(driver, "#count-failed .n") == "2"  # charge_card and the XSS job
            assert _text(driver, "#count-scheduled .n") == "1"
            assert "test-host:4242" in body
        elif name == "jobs":
            ids = [int(e.get_attribute("data-job"))
                   for e in driver.find_elements(by.CSS_SELECTOR, "tr[data-job]")]
            assert ids == sorted(ids, reverse=True)
            assert set(ids) == {*seeded.waiting, *seeded.resize, seeded.scheduled,
                                seeded.running, seeded.failed, seeded.xss}
        elif name == "job":
            assert "card declined" in _text(driver, "#job-error")
            assert "CardError: card declined" in _text(driver, "#job-traceback")
            assert '"amount": 12' in _text(driver, "#job-payload")
            assert "failed" in _text(driver, "#job-state")
        elif name == "history":
            assert "sync_crm" in body and "completed" in body
            assert "Finished jobs are kept 7.0 days" in _text(driver, "#retention")
        elif name == "queues":
            assert "(no queue: parallel)" in body
        elif name == "engines":
            assert "test-host" in body and "dead" in body  # its lease ran out
        elif name == "cron":
            assert "nightly-report" in body and "0 2 * * *" in body and "2h00m" in body
    # A narrow window: the page does not overflow it (wide tables scroll in their box).
    driver.set_window_size(420, 900)
    try:
        for path in ("/", f"/jobs/{seeded.failed}", "/jobs"):
            _open(driver, dashboard, path)
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} overflows a 420 px window by {overflow} px"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "jobs-narrow.png"))
    finally:
        driver.set_window_size(1280, 900)
    for name, path in shots.items():
        assert path.stat().st_size > 10_000, f"{name}: screenshot too small"
    if UPDATE_SCREENSHOTS:
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        for name in ("overview", "jobs"):
            shutil.copyfile(shots[name], README_IMAGES / f"dashboard-{name}.png")


def test_jobs_filter_by_task_then_open_a_job_when_clicked(
        driver: Any, dashboard: DashboardProc, seeded: Seeded) -> None:
    by = _by()
    _open(driver, dashboard, "/jobs")
    field = driver.find_element(by.CSS_SELECTOR, "#job-filter input[name=task]")
    field.send_keys("send_email")
    field.submit()
    wait_for(lambda: "task=send_email" in driver.current_url, what="the filtered page")
    rows = driver.find_elements(by.CSS_SELECTOR, "tr[data-job]")
    shown = {int(r.get_attribute("data-job")) for r in rows}
    assert shown == {*seeded.waiting, seeded.scheduled}
    assert {r.find_element(by.CSS_SELECTOR, "td.task").text for r in rows} == {"send_email"}
    driver.find_element(by.LINK_TEXT, str(seeded.waiting[0])).click()
    wait_for(lambda: driver.current_url.endswith(f"/jobs/{seeded.waiting[0]}"),
             what="the job's page")
    assert "user0@example.com" in _text(driver, "#job-payload")
    assert "waiting" in _text(driver, "#job-state")


def test_retry_an_exhausted_job_shows_it_waiting_when_clicked(
        driver: Any, dashboard: DashboardProc, dash_url: str, seeded: Seeded) -> None:
    by = _by()
    _open(driver, dashboard, f"/jobs/{seeded.exhausted}")
    assert "exhausted" in _text(driver, "#job-state")
    assert "TimeoutError: CRM timed out" in _text(driver, "#job-traceback")
    driver.find_element(by.ID, "action-retry").click()
    wait_for(lambda: driver.find_elements(by.ID, "results"), what="the result page")
    assert "1 of 1 job changed" in _text(driver, "h1")
    driver.find_element(by.ID, "back").click()
    wait_for(lambda: driver.current_url.endswith(f"/jobs/{seeded.exhausted}"),
             what="the job's page again")
    assert "waiting" in _text(driver, "#job-state")
    assert _job_state(dash_url, seeded.exhausted) == "waiting"
    # The other exhausted job was not touched.
    assert _job_state(dash_url, seeded.exhausted_other) is None
    assert f"dashboard: one job retry: 1 of 1 job(s) changed ({seeded.exhausted}) by " \
           "anonymous" in wait_for(lambda: "one job retry" in dashboard.output()
                                   and dashboard.output(), what="the action's log line")


def test_bulk_remove_every_job_matching_a_filter_when_confirmed(
        driver: Any, dashboard: DashboardProc, dash_url: str, seeded: Seeded) -> None:
    by = _by()
    from selenium.webdriver.support.select import Select

    _open(driver, dashboard, "/jobs?task=resize")
    Select(driver.find_element(by.CSS_SELECTOR, "#job-bulk select[name=action]")
           ).select_by_value("remove")
    driver.find_element(by.ID, "bulk-matching").click()
    wait_for(lambda: driver.find_elements(by.ID, "match-count"), what="the confirmation")
    assert _text(driver, "#match-count") == "2 jobs match."
    _shoot(driver, "bulk-confirmation")
    # Nothing is removed until it is confirmed.
    assert all(_job_state(dash_url, i) == "waiting" for i in seeded.resize)
    driver.find_element(by.ID, "confirm").click()
    wait_for(lambda: driver.find_elements(by.ID, "results"), what="the result page")
    assert "2 of 2 jobs changed" in _text(driver, "h1")
    assert all(_job_state(dash_url, i) is None for i in seeded.resize)
    assert all(_job_state(dash_url, i) == "waiting" for i in seeded.waiting)
    driver.find_element(by.ID, "back").click()
    wait_for(lambda: "task=resize" in driver.current_url, what="the filtered list")
    assert _text(driver, "#no-jobs") == "No jobs match."


def test_html_in_task_payload_and_error_stays_text_when_shown(
        driver: Any, dashboard: DashboardProc, seeded: Seeded) -> None:
    by = _by()
    for path in ("/jobs", f"/jobs/{seeded.xss}", "/"):
        _open(driver, dashboard, path)
        assert driver.execute_script("return window.__xss === undefined"), path
        assert not driver.find_elements(by.CSS_SELECTOR, "main img, main b, main script")
    _open(driver, dashboard, f"/jobs/{seeded.xss}")
    assert _text(driver, "#job-task") == XSS_TASK
    assert json.dumps(XSS_PAYLOAD["html"]) in _text(driver, "#job-payload")
    assert _text(driver, "#job-error") == XSS_ERROR
    _shoot(driver, "xss-job")


def test_refresh_updates_counts_and_pauses_while_selecting_when_live(
        driver: Any, dashboard: DashboardProc, dash_url: str) -> None:
    _open(driver, dashboard, "/")
    before = int(_text(driver, "#count-waiting .n"))
    with psycopg.connect(dash_url, autocommit=True) as conn:
        conn.execute("insert into skivi.job (task_identifier) values ('late_arrival')")
    wait_for(lambda: _text(driver, "#count-waiting .n") == str(before + 1), timeout=15,
             what="the overview's waiting count to refresh")
    _open(driver, dashboard, "/jobs")
    _click(driver, "tr[data-job] input[type=checkbox]")
    wait_for(lambda: "paused" in _text(driver, "#live-status"), timeout=15,
             what="the refresh to pause while a job is ticked")


def test_read_only_shows_no_action_and_refuses_posts_when_served_read_only(
        driver: Any, read_only_dashboard: DashboardProc, dash_url: str,
        seeded: Seeded) -> None:
    by = _by()
    ro = read_only_dashboard
    for path in ("/jobs", f"/jobs/{seeded.waiting[1]}", f"/jobs/{seeded.exhausted_other}",
                 "/history"):
        _open(driver, ro, path)
        assert _text(driver, "#read-only") == "read-only"
        assert not driver.find_elements(by.CSS_SELECTOR, "form[method=post]"), path
        assert not driver.find_elements(by.CSS_SELECTOR, "input[type=checkbox]"), path
    _shoot(driver, "read-only-job")
    # A direct POST, with a valid CSRF cookie and field, is refused too.
    jar = CookieJar()
    assert ro.get("/jobs", jar)[0] == 200
    token = next(c.value for c in jar if c.name == "skivi_csrf")
    for path, fields in ((f"/jobs/{seeded.waiting[1]}/action", {"action": "remove"}),
                         ("/jobs/bulk", {"action": "remove"}),
                         (f"/history/{seeded.exhausted_other}/retry", {})):
        status, body = ro.post(path, {**fields, "csrf": token}, jar)
        assert status == 403, (path, status)
        assert "read-only" in body
    assert _job_state(dash_url, seeded.waiting[1]) == "waiting"
    assert _job_state(dash_url, seeded.exhausted_other) is None  # still in history
