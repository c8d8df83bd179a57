"""The access token: bearer header or login cookie on every route, the login page, and the
refusal to serve a non-loopback address without a token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from graph_runtime import Folders, cli
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from graph_runtime.server.auth import COOKIE, require_token, session_value
from graph_runtime.settings import SettingsError
from tests.support.toy_nodes import CANVAS, image_workflow, toy_registry

TOKEN = "s3cret-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest_asyncio.fixture
async def guarded(aiohttp_client: Any, run_folders: Folders,
                  folders: dict[str, Path]) -> Any:
    app = create_app(Executor(toy_registry(CANVAS), folders=run_folders),
                     workflows_dir=folders["workflows"], auth_token=TOKEN)
    return await aiohttp_client(app)


async def log_in(client: Any, token: str = TOKEN, next_path: str = "/") -> Any:
    return await client.post("/login", data={"token": token, "next": next_path},
                             allow_redirects=False)


@pytest.mark.parametrize("method,path", [("GET", "/api/queue"), ("GET", "/api/nodes"),
                                         ("POST", "/api/prompt"), ("POST", "/api/interrupt"),
                                         ("GET", "/api/history"), ("GET", "/object_info"),
                                         ("POST", "/prompt"), ("GET", "/api/view"),
                                         ("GET", "/js/main.js"), ("GET", "/api/workflows")])
@pytest.mark.asyncio
async def test_every_route_needs_the_token(guarded: Any, method: str, path: str) -> None:
    resp = await guarded.request(method, path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["errors"][0]["code"] == "unauthorized"
    wrong = await guarded.request(method, path, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


@pytest.mark.asyncio
async def test_bearer_header_opens_the_api(guarded: Any) -> None:
    assert (await guarded.get("/api/queue", headers=BEARER)).status == 200
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert (await guarded.get("/api/nodes", headers=lower)).status == 200
    resp = await guarded.post("/api/prompt", json={"workflow": image_workflow()},
                              headers=BEARER)
    assert resp.status == 200
    ws = await guarded.ws_connect("/ws?client_id=b1", headers=BEARER)
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()


@pytest.mark.asyncio
async def test_pages_go_to_the_login_form(guarded: Any) -> None:
    resp = await guarded.get("/?x=1", headers={"Accept": "text/html"}, allow_redirects=False)
    location = URL(resp.headers["Location"])
    assert resp.status == 303 and location.path == "/login"
    assert location.query["next"] == "/?x=1"
    form = await guarded.get("/login?next=/%3Fx%3D1")
    assert form.status == 200 and form.content_type == "text/html"
    text = await form.text()
    assert '<form method="post" action="/login">' in text and "<script" not in text
    assert 'value="/?x=1"' in text
    assert "script-src 'self'" in form.headers["Content-Security-Policy"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await guarded.ws_connect("/ws?client_id=anon")
    assert info.value.status == 401


@pytest.mark.asyncio
async def test_login_sets_a_strict_cookie_and_the_canvas_works(guarded: Any) -> None:
    bad = await log_in(guarded, "wrong-token")
    assert bad.status == 401 and "not right" in await bad.text()
    assert COOKIE not in guarded.session.cookie_jar.filter_cookies(guarded.make_url("/"))
    resp = await log_in(guarded, next_path="/?w=1")
    assert resp.status == 303 and resp.headers["Location"] == "/?w=1"
    header = resp.headers["Set-Cookie"]
    assert re.search(r"HttpOnly", header, re.I) and re.search(r"SameSite=Strict", header, re.I)
    assert "Path=/" in header and TOKEN not in header
    assert f"{COOKIE}={session_value(TOKEN)}" in header
    # The canvas: the page, its script, the API and the websocket, with the cookie alone.
    page = await guarded.get("/", headers={"Accept": "text/html"})
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    assert (await guarded.get("/js/main.js")).status == 200
    assert (await guarded.get("/api/nodes")).status == 200
    queued = await guarded.post("/api/prompt", json={"workflow": image_workflow(),
                                                     "client_id": "canvas"})
    assert queued.status == 200
    ws = await guarded.ws_connect("/ws?client_id=canvas")
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()
    out = await guarded.post("/logout", allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/login"
    assert (await guarded.get("/api/nodes")).status == 401


@pytest.mark.asyncio
async def test_a_forged_cookie_is_refused(guarded: Any) -> None:
    for value in (TOKEN, session_value("another-token-of-length"), ""):
        guarded.session.cookie_jar.update_cookies({COOKIE: value})
        assert (await guarded.get("/api/queue")).status == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "http://evil.example/",
                                    "/\\evil.example", "javascript:alert(1)"])
@pytest.mark.asyncio
async def test_login_never_redirects_off_site(guarded: Any, target: str) -> None:
    resp = await log_in(guarded, next_path=target)
    assert resp.status == 303 and resp.headers["Location"] == "/"


@pytest.mark.asyncio
async def test_login_cannot_be_posted_from_another_site(guarded: Any) -> None:
    resp = await guarded.post("/login", data={"token": TOKEN},
                              headers={"Origin": "http://evil.example"},
                              allow_redirects=False)
    assert resp.status == 403 and "Set-Cookie" not in resp.headers


@pytest.mark.asyncio
async def test_no_token_means_no_login(client: Any) -> None:
    assert (await client.get("/api/queue")).status == 200
    assert (await client.get("/login")).status == 404


# ---------------------------------------------------------------------------- starting
def test_non_loopback_binds_need_a_good_token() -> None:
    require_token("127.0.0.1", None)
    require_token("::1", None)
    require_token("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "192.168.1.5", "::", "box.lan"):
        with pytest.raises(SettingsError, match="--auth-token"):
            require_token(host, None)
    with pytest.raises(SettingsError, match="at least 16"):
        require_token("0.0.0.0", "short")


def test_serve_refuses_an_open_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import graph_runtime.server.main as server_main

    started: list[web.Application] = []
    monkeypatch.setattr(server_main.web, "run_app", lambda app, **kw: started.append(app))
    monkeypatch.delenv("NOODLE_AUTH_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    # A module that registers nothing: nothing runs here, and the global registry stays.
    args = ["serve", "--host", "0.0.0.0", "--nodes", "json", "--output-dir", "out"]
    assert cli.main(args) == cli.EXIT_INVALID and not started
    assert "NOODLE_AUTH_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("NOODLE_AUTH_TOKEN", TOKEN)
    assert cli.main(args) == cli.EXIT_OK and len(started) == 1
    assert cli.main([*args, "--auth-token", "x" * 20]) == cli.EXIT_OK and len(started) == 2
    assert "/login" in capsys.readouterr().err
