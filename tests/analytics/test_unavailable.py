"""An unreachable ClickHouse: reporting answers 503 (and still 400 for bad input)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from analytics.api import create_app
from analytics.settings import Settings
from tests.analytics.harness import INTERNAL_TOKEN, caller
from tests.conftest import free_port


@pytest.fixture(scope="module")
def unreachable() -> Iterator[TestClient]:
    port = free_port()  # nothing listens there
    settings = Settings(clickhouse_url=f"http://default:secret@127.0.0.1:{port}/sluice",
                        internal_token=INTERNAL_TOKEN, analytics_sink=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("GET", "/v1/usage/export", caller("t")),
    ("GET", "/v1/usage/export?format=csv", caller("t")),
    ("GET", "/v1/analytics", caller("t")),
    ("GET", "/v1/admin/analytics", caller(admin=True)),
    ("GET", "/v1/admin/analytics/tenants", caller(admin=True)),
    ("POST", "/v1/admin/sql", caller(admin=True)),
    ("GET", "/ready", {}),
])
def test_reporting_is_503(unreachable: TestClient, method: str, path: str,
                          headers: dict[str, str]) -> None:
    r = unreachable.request(method, path, headers=headers, json={"query": "SELECT 1"})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    if path != "/ready":
        error = r.json()["error"]
        assert error["type"] == "server_error"
        assert error["code"] == "clickhouse_unavailable"
        assert set(error) == {"message", "type", "param", "code"}


def test_the_process_itself_is_alive(unreachable: TestClient) -> None:
    assert unreachable.get("/health").status_code == 200


def test_bad_input_is_still_400(unreachable: TestClient) -> None:
    r = unreachable.get("/v1/usage/export?format=xml", headers=caller("t"))
    assert r.status_code == 400


def test_no_caller_is_still_401(unreachable: TestClient) -> None:
    assert unreachable.get("/v1/analytics").status_code == 401
