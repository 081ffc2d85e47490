"""Optional bearer-token authentication: when a token is configured, every route but /health and the
dashboard's files (which hold no data, and ask for the token) needs it."""

from __future__ import annotations

import hmac

import falcon

from api.dashboard import DASHBOARD_PATHS

__all__ = ["BearerAuth"]

PUBLIC_PATHS = frozenset({"/health", *DASHBOARD_PATHS})


class BearerAuth:
    """Falcon middleware: 401 unless ``Authorization: Bearer <token>`` matches, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in PUBLIC_PATHS:
            return
        scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise falcon.HTTPUnauthorized(description="a valid bearer token is required", challenges=["Bearer"])
