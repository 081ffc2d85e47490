"""The optional bearer token: every route but /health needs it once it is configured."""

from __future__ import annotations

from typing import Any

import pytest

TOKEN = "s3cret-token"


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"server": {"auth_token": TOKEN}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/tasks/abc"), ("GET", "/openapi.json")]
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(""),
        bearer(TOKEN + "x"),
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_without_the_right_token_every_route_is_a_401(client, method, path, headers):
    result = client.simulate_request(method, path, headers=headers, json={"action": "x"})

    assert result.status_code == 401
    assert result.json == {"error": "a valid bearer token is required"}
    assert result.headers["www-authenticate"] == "Bearer"


def test_with_the_token_everything_works(client):
    submitted = client.simulate_post("/tasks", json={"action": "x"}, headers=bearer(TOKEN))
    assert submitted.status_code == 202

    task_id = submitted.json["id"]
    assert client.simulate_get(f"/tasks/{task_id}", headers=bearer(TOKEN)).status_code == 200
    assert client.simulate_get("/tasks", headers={"Authorization": f"bearer {TOKEN}"}).json["count"] == 1
    document = client.simulate_get("/openapi.json", headers=bearer(TOKEN)).json
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}


def test_health_needs_no_token(client):
    assert client.simulate_get("/health").status_code == 200
