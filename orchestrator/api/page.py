"""``GET /``: the built-in page, and its assets under ``/ui/``. Static files only: the page reads everything
else through the same REST and WebSocket endpoints every UI uses, and loads nothing from outside the server."""

from __future__ import annotations

from pathlib import Path

from sanic import HTTPResponse, Request, Sanic
from sanic.response import file, json, redirect

WEB = Path(__file__).resolve().parent.parent / "web"
# The page may talk to this server only: no CDN, no outside fonts, no outside requests of any kind.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def setup_page(app: Sanic) -> None:
    app.add_route(index, "/", methods=["GET"], name="page_index")
    app.add_route(ui_root, "/ui", methods=["GET"], name="page_ui_root")
    app.add_route(page_config, "/ui/config.json", methods=["GET"], name="page_config")
    # index: "/ui/" is the page too (without it, the static handler answers its own folder with a 500).
    app.static("/ui/", str(WEB), name="page_assets", index="index.html")
    app.register_middleware(_security_headers, "response")


async def index(request: Request) -> HTTPResponse:
    return await file(WEB / "index.html", mime_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


async def page_config(request: Request) -> HTTPResponse:
    """What the page must know before its first read: whether to ask for a read token (so it asks before a
    request fails, rather than after)."""
    return json({"read_token_required": bool(request.app.ctx.settings.auth.read_tokens)})


async def ui_root(request: Request) -> HTTPResponse:
    return redirect("/")


async def _security_headers(request: Request, response: HTTPResponse) -> None:
    if request.path == "/" or request.path.startswith("/ui"):
        response.headers.update(SECURITY_HEADERS)
