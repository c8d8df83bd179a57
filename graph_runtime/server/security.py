"""Request guards: DNS rebinding, cross-site requests, and response hardening headers.

A server on 127.0.0.1 is still reachable from any web page the user opens: the page can
POST to it (CSRF — ComfyUI's CVE-2024-10481), or a hostile DNS name can be re-pointed at
127.0.0.1 so the browser treats our origin as the attacker's (DNS rebinding). So:

* on a loopback bind, every request must carry a loopback `Host` (`localhost`,
  `127.x.x.x`, `[::1]`, with or without a port) — a rebinding page sends its own name;
* every state-changing request (anything but GET/HEAD/OPTIONS) and the websocket
  handshake must either carry no `Origin` or exactly our own (`http://` + the `Host`);
  `Origin: null` (sandboxed frames, `file:` pages — the bypass of ComfyUI's first fix) is
  refused, as is `Sec-Fetch-Site: cross-site`;
* every response gets `X-Content-Type-Options: nosniff` and a referrer policy; HTML gets a
  strict Content-Security-Policy so that nothing but our own scripts ever runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from graph_runtime.server.responses import error_response


def refuse(reason: str) -> web.Response:
    return error_response(403, "forbidden", reason)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def split_host(host: str) -> str:
    """`Host` header value without its port: `[::1]:8188` -> `::1`, `a.b:80` -> `a.b`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback_name(host: str) -> bool:
    """Whether a host name (no port) can only mean this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_bind(bind_host: str) -> bool:
    return is_loopback_name(split_host(bind_host) if bind_host else "127.0.0.1")


def security_middleware(loopback_only: bool) -> Callable[[web.Request, Handler],
                                                          Awaitable[web.StreamResponse]]:
    """The guard as an aiohttp middleware; `loopback_only` when bound to a loopback address."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get("Host", "")
        if loopback_only and not is_loopback_name(split_host(host_header)):
            return refuse("this server only answers requests addressed to localhost")
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method not in SAFE_METHODS or is_ws:
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() != f"http://{host_header.lower()}" \
                    and origin.lower() != f"https://{host_header.lower()}":
                return refuse(f"cross-origin request from {origin!r} refused")
            if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                return refuse("cross-site request refused")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        if response.prepared:  # a websocket or stream: its headers are already sent
            return response
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.content_type == "text/html":
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return guard
