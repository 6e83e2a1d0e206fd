"""Which errors are recorded as RequestRejected events: those of the inference endpoints."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth import IpLimiter
from gateway.keys import Principal
from gateway.settings import Settings
from schemas.events import RequestRejected
from schemas.tiers import Budgets, Limits

KEY = "sk-good"


class Keys:
    def authenticate(self, token: str) -> Principal | None:
        return Principal("k1", "acme", False, Limits(), Budgets()) if token == KEY else None


@pytest.fixture
def rejected() -> list[RequestRejected]:
    return []


@pytest.fixture
def client(rejected: list[RequestRejected]) -> TestClient:
    app = create_app(Settings())  # not entered: no lifespan, so no broker
    app.state.gateway = SimpleNamespace(keys=Keys(), ips=IpLimiter(60, 30, []),
                                        outcomes=SimpleNamespace(rejected=rejected.append))
    return TestClient(app)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_an_unauthenticated_inference_request_is_an_event(
        client: TestClient, rejected: list[RequestRejected], path: str) -> None:
    r = client.post(path, content=b"not even json")
    assert r.status_code == 401
    [event] = rejected
    assert (event.endpoint, event.status_code, event.key_id) == (path, 401, None)
    assert event.request_id == r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_bad_body_is_an_event_with_its_caller(
        client: TestClient, rejected: list[RequestRejected], path: str) -> None:
    r = client.post(path, content=b'{"model": ', headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    [event] = rejected
    assert (event.endpoint, event.status_code, event.error_code) == (path, 400, None)
    assert (event.key_id, event.tenant, event.model) == ("k1", "acme", None)


def test_other_endpoints_errors_are_not_events(
        client: TestClient, rejected: list[RequestRejected]) -> None:
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/chat/completions").status_code == 405
    assert rejected == []
