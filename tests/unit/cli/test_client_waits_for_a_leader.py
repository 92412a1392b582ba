"""The CLI sends a request again while a replica answers 503 with Retry-After (no leader
yet), and gives up with the server's message otherwise."""

from __future__ import annotations

import httpx
import pytest

from faena.cli import client
from faena.cli.client import Api, ClientError
from faena.cli.config import ClientConfig

NO_LEADER = {"code": "ORC-INFRA", "detail": "no replica leads right now; retry shortly"}


class Replica:
    """Answers 503 ``busy`` times (with or without Retry-After), then 201."""

    def __init__(self, busy: int, retry_after: str | None = "0") -> None:
        self.busy = busy
        self.retry_after = retry_after
        self.keys: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("idempotency-key"))
        if len(self.keys) <= self.busy:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(503, json=NO_LEADER, headers=headers)
        return httpx.Response(201, json={"run_id": "r1"})


def api_for(replica: Replica) -> Api:
    api = Api.from_config(ClientConfig(server="http://ci:8080", token="t"))
    api.http = httpx.Client(base_url="http://ci:8080", transport=httpx.MockTransport(replica))
    return api


def test_a_503_with_retry_after_is_sent_again_until_a_leader_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    replica = Replica(busy=3)
    answer = api_for(replica).call("POST", "/api/v1/pipelines", content=b"x",
                                   headers={"Idempotency-Key": "k1"})  # fmt: skip
    assert answer == {"run_id": "r1"}
    assert replica.keys == ["k1"] * 4  # the same key each time: one run at most
    assert capsys.readouterr().err.count("waiting: ORC-INFRA") == 1


def test_a_503_without_retry_after_is_an_error_at_once() -> None:
    replica = Replica(busy=1, retry_after=None)
    with pytest.raises(ClientError, match="ORC-INFRA") as caught:
        api_for(replica).call("GET", "/api/v1/nodes")
    assert caught.value.exit_code == 1 and len(replica.keys) == 1


def test_the_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "WAIT_FOR_LEADER", 0.0)
    replica = Replica(busy=100)
    with pytest.raises(ClientError, match="no replica leads"):
        api_for(replica).call("GET", "/api/v1/nodes")
    assert len(replica.keys) <= 2
