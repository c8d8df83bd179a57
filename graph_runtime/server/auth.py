"""One shared token guarding a server that other machines can reach.

`noodle serve --auth-token TOKEN` (or `NOODLE_AUTH_TOKEN`) turns it on; a server bound to
anything but a loopback address refuses to start without one (`require_token`), because
whoever reaches it can run workflows and read the output folder. With a token, every
request must carry it, in one of two ways:

* `Authorization: Bearer TOKEN` — scripts, ComfyUI API clients, the websocket of a client
  that can set headers;
* the session cookie the login page sets (`GET /login` shows a form, `POST /login` checks
  the token and sets an HttpOnly, SameSite=Strict cookie) — the canvas, whose requests and
  websocket carry the cookie by themselves.

The cookie holds an HMAC of the token, not the token, so a copied cookie does not reveal
it, and changing the token ends every session. Comparisons are constant-time. Without a
valid token a page request is sent to the login form and anything else gets a JSON 401.
The request guards of `security` (Host, Origin) still run first, so the login form cannot
be posted from another site.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from graph_runtime.server.responses import error_response
from graph_runtime.server.security import is_loopback_bind
from graph_runtime.settings import SettingsError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "noodle_session"
COOKIE_MAX_AGE = 30 * 24 * 3600
MIN_TOKEN_LENGTH = 16
LOGIN, LOGOUT = "/login", "/logout"
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def require_token(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token, or with a guessable one."""
    if token is None:
        if not is_loopback_bind(host):
            raise SettingsError(
                f"listening on {host} needs an access token: pass --auth-token TOKEN or set "
                f"NOODLE_AUTH_TOKEN (make one with: {MAKE_TOKEN})")
        return
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(f"the access token must be at least {MIN_TOKEN_LENGTH} "
                            f"characters long (make one with: {MAKE_TOKEN})")


def session_value(token: str) -> str:
    """The cookie value for `token`: derived from it, not equal to it."""
    return hmac.new(token.encode(), b"noodle login session", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def authorized(request: web.Request, token: str) -> bool:
    """Whether the request carries the token (bearer header) or a session cookie for it."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(value.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and _same(cookie, session_value(token))


def _safe_next(target: str) -> str:
    """Where to go after logging in: a path on this server only (never `//host` or a URL)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_page(next_path: str = "/", failed: bool = False, status: int = 200) -> web.Response:
    """The login form: no script, so the page's strict CSP holds."""
    note = '<p class="error">That token is not right.</p>' if failed else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Noodle: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px system-ui,sans-serif;background:#1e1e1e;color:#ddd;display:flex;
justify-content:center;margin-top:15vh}}form{{display:flex;flex-direction:column;gap:.6em;
width:20em}}input{{font:inherit;padding:.4em}}.error{{color:#f77}}</style></head>
<body><form method="post" action="{LOGIN}"><h1>Noodle</h1>{note}
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Log in</button></form></body></html>
"""
    response = web.Response(text=body, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _wants_page(request: web.Request) -> bool:
    is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
    return (request.method == "GET" and not is_ws
            and "text/html" in request.headers.get("Accept", ""))


def auth_middleware(token: str) -> Callable[[web.Request, Handler],
                                           Awaitable[web.StreamResponse]]:
    """Let through the login routes and requests carrying the token; refuse the rest."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in (LOGIN, LOGOUT) or authorized(request, token):
            return await handler(request)
        if _wants_page(request):
            raise web.HTTPSeeOther(f"{LOGIN}?next={quote(request.path_qs, safe='/')}")
        response = error_response(401, "unauthorized", "this server needs its access token: "
                                  "an 'Authorization: Bearer TOKEN' header or a log-in at "
                                  f"{LOGIN}")
        response.headers["WWW-Authenticate"] = 'Bearer realm="noodle"'
        return response

    return check


def login_handlers(token: str) -> tuple[Handler, Handler, Handler]:
    """`GET /login`, `POST /login` and `POST /logout`."""

    async def show(request: web.Request) -> web.StreamResponse:
        return login_page(_safe_next(request.query.get("next", "/")))

    async def submit(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given, target = form.get("token"), _safe_next(str(form.get("next", "/")))
        if not isinstance(given, str) or not _same(given, token):
            return login_page(target, failed=True, status=401)
        done = web.HTTPSeeOther(target)
        done.set_cookie(COOKIE, session_value(token), max_age=COOKIE_MAX_AGE, path="/",
                        httponly=True, samesite="Strict", secure=request.secure)
        raise done

    async def logout(request: web.Request) -> web.StreamResponse:
        done = web.HTTPSeeOther(LOGIN)
        done.del_cookie(COOKIE, path="/")
        raise done

    return show, submit, logout


def install(app: web.Application, token: str) -> None:
    """Require `token` on every route of `app` and add the login routes. Call before the
    app starts, after the request guards (they run first)."""
    app.middlewares.append(auth_middleware(token))
    show, submit, logout = login_handlers(token)
    app.router.add_get(LOGIN, show)
    app.router.add_post(LOGIN, submit)
    app.router.add_post(LOGOUT, logout)
