"""``GET /``: the dashboard, a page of plain HTML, CSS and JavaScript in ``api/static`` (no build
step, nothing from a CDN), and its two files under ``/dashboard/``.

The page holds no data: it reads the API with ``fetch``, so it is served without the bearer
token and asks for the token itself when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

import falcon

__all__ = ["DASHBOARD_PATHS", "DashboardFile", "DashboardPage"]

STATIC = Path(__file__).with_name("static")
FILES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
DASHBOARD_PATHS = frozenset({"/", *(f"/dashboard/{name}" for name in FILES)})  #: served without a token
# The page runs only its own script and style, talks only to this origin, and cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _serve(resp: falcon.Response, name: str, content_type: str) -> None:
    resp.content_type = content_type
    resp.data = (STATIC / name).read_bytes()
    resp.set_headers(SECURITY_HEADERS)


class DashboardPage:
    """``GET /``: the dashboard's HTML."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _serve(resp, "index.html", falcon.MEDIA_HTML)


class DashboardFile:
    """``GET /dashboard/{name}``: the dashboard's script and style sheet; nothing else."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in FILES:
            raise falcon.HTTPNotFound(description="no such file")
        _serve(resp, name, FILES[name])
