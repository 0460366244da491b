"""``create_app`` in-process (Starlette's TestClient, no browser) against the real
PostgreSQL: the auth hook's answers, the CSRF check, read-only mode, mounting under a path,
bad parameters, and that every page's statements run read-only."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.testclient import TestClient

import skivi
from skivi.dashboard import create_app
from tests.support.dashboard import Seeded

PAGES = ["/", "/jobs", "/jobs?task=send_email&state=waiting&q=user", "/jobs?sort=oldest",
         "/history", "/history?outcome=exhausted", "/queues", "/engines", "/cron",
         "/jobs/bulk?action=remove&task=resize", "/history/bulk?task=sync_crm"]


@pytest.fixture(scope="module")
def system(dash_url: str, seeded: Seeded) -> Iterator[skivi.System]:
    s = skivi.create_system({"database": {"connection_string": dash_url}})
    try:
        yield s
    finally:
        s.stop()


def _client(app: Any) -> TestClient:
    return TestClient(app, base_url="http://dashboard.test")


def _csrf(client: TestClient, path: str = "/jobs") -> str:
    assert client.get(path).status_code == 200
    token = client.cookies.get("skivi_csrf")
    assert token
    return str(token)


def _in_queue(url: str, job_id: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("select 1 from skivi.job_live where id = %s", [job_id]).fetchone() \
            is not None


def test_every_page_answers_200_when_the_schema_has_jobs(system: skivi.System) -> None:
    with _client(create_app(system)) as client:
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
            assert response.headers["content-type"].startswith("text/html")
            assert "script-src" not in response.headers["content-security-policy"]
            assert "default-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"


def test_bad_parameters_answer_400_naming_them_when_given(system: skivi.System) -> None:
    with _client(create_app(system)) as client:
        for path, named in (("/jobs?state=exploded", "state: 'exploded' is not one of"),
                            ("/jobs?cursor=abc", "cursor: not a job id: 'abc'"),
                            ("/jobs/0", "id: out of range: '0'"),
                            ("/history?cursor=yesterday", "cursor: not a time and an id"),
                            ("/jobs/bulk?action=explode", "action: 'explode' is not one of"),
                            ("/jobs?task=" + "x" * 600, "task: longer than 512")):
            response = client.get(path)
            assert response.status_code == 400, path
            assert named in response.text.replace("&#39;", "'"), (path, response.text[-400:])


def test_a_post_without_the_csrf_token_is_refused_when_sent(
        system: skivi.System, dash_url: str, seeded: Seeded) -> None:
    target = seeded.waiting[2]
    with _client(create_app(system)) as client:
        token = _csrf(client)
        for fields in ({"action": "remove"}, {"action": "remove", "csrf": "x" * 43},
                       {"action": "remove", "csrf": ""}):
            response = client.post(f"/jobs/{target}/action", data=fields)
            assert response.status_code == 403, fields
            assert "CSRF" in response.text
        assert _in_queue(dash_url, target)
        # Another client's cookie with this token in the field: still refused.
        other = _client(create_app(system))
        other.cookies.set("skivi_csrf", "y" * 43)
        assert other.post(f"/jobs/{target}/action",
                          data={"action": "remove", "csrf": token}).status_code == 403
        assert _in_queue(dash_url, target)
        response = client.post(f"/jobs/{seeded.running}/action",
                               data={"action": "remove", "csrf": token})
        # Accepted, and the rule about running jobs holds: it is not removed.
        assert response.status_code == 200
        assert "not changed: claimed by an engine" in response.text
        assert _in_queue(dash_url, seeded.running)


def test_read_only_app_refuses_every_post_when_created_read_only(
        system: skivi.System, dash_url: str, seeded: Seeded) -> None:
    with _client(create_app(system, read_only=True)) as client:
        token = _csrf(client)
        assert "<form method=\"post\"" not in client.get(f"/jobs/{seeded.waiting[2]}").text
        for path in ("/jobs/bulk?action=remove", "/history/bulk"):
            assert client.get(path).status_code == 403, path
        for path in (f"/jobs/{seeded.waiting[2]}/action", "/jobs/selected", "/jobs/bulk",
                     "/history/selected", "/history/bulk",
                     f"/history/{seeded.exhausted_other}/retry"):
            response = client.post(path, data={"action": "remove", "csrf": token,
                                               "id": str(seeded.waiting[2])})
            assert response.status_code == 403, path
        assert _in_queue(dash_url, seeded.waiting[2])


def _basic_auth(request: Request) -> str | Response:
    header = request.headers.get("authorization", "")
    if header.startswith("Basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if (user, password) == ("ops", "secret"):
            return user
    return Response("login required", status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="skivi"'})


def test_auth_hook_decides_and_names_the_user_when_given(system: skivi.System,
                                                         seeded: Seeded) -> None:
    with _client(create_app(system, auth=_basic_auth)) as client:
        response = client.get("/jobs")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="skivi"'
        client.auth = ("ops", "wrong")
        assert client.get("/jobs").status_code == 401
        client.auth = ("ops", "secret")
        response = client.get("/jobs")
        assert response.status_code == 200
        assert ">ops<" in response.text.replace(" · ", "<")

    async def refuse(request: Request) -> bool:
        return False

    with _client(create_app(system, auth=refuse)) as client:
        assert client.get("/").status_code == 403
        assert client.post(f"/jobs/{seeded.waiting[2]}/action").status_code == 403


def test_mounted_under_a_path_links_stay_under_it_when_mounted(system: skivi.System) -> None:
    mounted = create_app(system)
    parent = Starlette(routes=[Mount("/ops/queue", app=mounted)])
    with _client(parent) as client:
        page = client.get("/ops/queue/jobs").text
        assert 'href="/ops/queue/static/dashboard.css"' in page
        assert 'href="/ops/queue/history"' in page
        assert client.get("/ops/queue/static/live.js").status_code == 200
        # A mounted app gets no lifespan of its own: the application closes it.
        client.portal.call(mounted.state.store.close)  # type: ignore[union-attr]
    # Handed full paths (a Django ASGI router): the prefix says where it lives.
    with _client(create_app(system, prefix="/skivi/")) as client:
        page = client.get("/skivi/jobs").text
        assert 'href="/skivi/queues"' in page
        assert client.get("/jobs").status_code == 404


def test_pages_run_in_read_only_transactions_when_served(system: skivi.System,
                                                         dash_url: str) -> None:
    """What a page runs in: a transaction the server itself says is read-only."""
    app = create_app(system)
    store = app.state.store
    with _client(app) as client:
        client.get("/")  # the pool exists from here on

        async def probe() -> Any:
            async def work(conn: psycopg.AsyncConnection[Any]) -> Any:
                cur = await conn.execute("show transaction_read_only")
                return (await cur.fetchone())[0]

            return await store.read(work)

        assert client.portal.call(probe) == "on"  # type: ignore[union-attr]


def test_history_bulk_retry_moves_every_exhausted_match_when_confirmed(
        system: skivi.System, dash_url: str, seeded: Seeded) -> None:
    with _client(create_app(system)) as client:
        token = _csrf(client, "/history")
        confirm = client.get("/history/bulk?task=sync_crm").text
        assert "2 exhausted jobs match." in confirm
        assert not _in_queue(dash_url, seeded.exhausted)
        response = client.post("/history/bulk", data={"task": "sync_crm", "csrf": token})
        assert response.status_code == 200
        assert "2 of 2 jobs changed" in response.text
        assert _in_queue(dash_url, seeded.exhausted)
        assert _in_queue(dash_url, seeded.exhausted_other)
        # Nothing left to retry: the confirmation says so and offers no button.
        again = client.get("/history/bulk?task=sync_crm").text
        assert "No exhausted job matches this filter" in again
        assert 'id="confirm"' not in again


def test_selected_jobs_are_rescheduled_and_the_rest_untouched_when_ticked(
        system: skivi.System, dash_url: str, seeded: Seeded) -> None:
    ticked = seeded.waiting[:2]
    with _client(create_app(system)) as client:
        token = _csrf(client)
        response = client.post("/jobs/selected", data={
            "csrf": token, "action": "reschedule", "run_at": "2099-05-01T10:00:00",
            "id": [str(i) for i in ticked]})
        assert response.status_code == 200, response.text[-500:]
        assert "2 of 2 jobs changed" in response.text
        nothing = client.post("/jobs/selected", data={"csrf": token, "action": "remove"})
        assert nothing.status_code == 400
        assert "no job selected" in nothing.text
    with psycopg.connect(dash_url, autocommit=True) as conn:
        rows = dict(conn.execute(
            "select id, run_at = '2099-05-01T10:00:00Z' from skivi.job_live where id = any(%s)",
            [seeded.waiting]).fetchall())
    assert rows == {ticked[0]: True, ticked[1]: True, seeded.waiting[2]: False}


def test_concurrent_first_requests_share_one_pool_when_served(system: skivi.System) -> None:
    app = create_app(system)
    store = app.state.store

    async def burst() -> list[Any]:
        import asyncio

        async def one(conn: psycopg.AsyncConnection[Any]) -> Any:
            cur = await conn.execute("select pg_sleep(0.2), pg_backend_pid()")
            return (await cur.fetchone())[1]

        return list(await asyncio.gather(*(store.read(one) for _ in range(8))))

    with _client(app) as client:
        pids = client.portal.call(burst)  # type: ignore[union-attr]
    assert len(pids) == 8
    # One pool of at most 4 connections served all eight (two pools would use up to 8).
    assert len(set(pids)) <= 4


def test_cancel_action_cancels_a_waiting_job_and_asks_a_running_ones_engine_when_posted(
        system: skivi.System, dash_url: str) -> None:
    from skivi.db.queries import engine_register, for_schema, job_claim

    # Jobs of this test's own, the running one claimed first (lowest priority value).
    running = skivi.add_job(system, "cancel_me", priority=-32768).id
    waiting = skivi.add_job(system, "cancel_me", priority=-32768).id
    with psycopg.connect(dash_url, autocommit=True) as conn:
        q = for_schema("skivi")
        engine = engine_register.run(conn, q, hostname="h", pid=1, version="t",
                                     lease_timeout=30.0, processes=1, concurrency=1)
        [claimed] = job_claim.run(conn, q, engine=engine, limit=1, serial_limit=1,
                                  max_bytes=1 << 40)
        assert claimed[0] == running

    def auth(request: Request) -> str:
        return "alice"

    with _client(create_app(system, auth=auth)) as client:
        token = _csrf(client)
        review = client.get("/jobs/bulk?action=cancel&task=cancel_me")
        assert review.status_code == 200
        assert "2 jobs match" in review.text and "cancelled where they run" in review.text
        response = client.post("/jobs/selected", data={
            "csrf": token, "action": "cancel", "reason": "not needed",
            "id": [str(waiting), str(running)]})
        assert response.status_code == 200, response.text[-500:]
        assert "2 of 2 jobs changed" in response.text
        assert f"cancel requested: engine {engine} stops it" in response.text
    with psycopg.connect(dash_url, autocommit=True) as conn:
        row = conn.execute("select outcome, reason, cancelled_by from skivi.job_history "
                           "where id = %s", [waiting]).fetchone()
        assert row == ("cancelled", "not needed", "alice")
        asked = conn.execute("select requested_by, reason from skivi.job_cancel "
                             "where id = %s", [running]).fetchone()
        assert asked == ("alice", "not needed")
        # Leave the module's database as the other tests expect it.
        conn.execute("delete from skivi.job_running where id = %s", [running])
        conn.execute("delete from skivi.job_cancel where id = %s", [running])
        conn.execute("delete from skivi.engine where id = %s", [engine])


def test_queue_page_shows_what_is_paused_when_queues_and_tasks_are(
        system: skivi.System) -> None:
    with _client(create_app(system)) as client:
        assert "Nothing is paused" in client.get("/queues").text
        skivi.pause_queue(system, skivi.PARALLEL_QUEUE)
        skivi.pause_task(system, "resize")
        try:
            page = client.get("/queues").text
        finally:
            skivi.resume_queue(system, skivi.PARALLEL_QUEUE)
            skivi.resume_task(system, "resize")
    assert "<strong>paused</strong>" in page
    assert "@parallel (no queue: parallel)" in page
    assert "<td>task</td><td>resize</td>" in page
