"""Hostile input against a real `attimo serve`: every bad request answers a 4xx
with a reason (never a 500 or a traceback), metric labels stay bounded, slow
clients are cut off, a storm of disconnects leaves the API answering, and
public error bodies name no host."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from engine.testing.processes import SITE_KEY, start_api, stop_api, wait_until
from tests.conftest import signed

READ_TIMEOUT_MS = 600


@pytest.fixture(scope="module")
def strict_api(redis_server, tmp_path_factory):
    """An API with a short read deadline, of its own: these tests hold its
    connections open on purpose."""
    server = start_api(redis_server.url, tmp_path_factory.mktemp("strict"),
                       ATTIMO_READ_TIMEOUT_MS=str(READ_TIMEOUT_MS))
    yield server
    stop_api(server)


def events(**properties) -> dict:
    return {"events": [{"id": "e-1", "type": "page_view", "anonymous_id": "a-hostile",
                        "properties": properties}]}


def test_unknown_placements_share_one_metric_label_and_bad_names_are_422(api):
    names = [f"placement-{n}-{'x' * 50}" for n in range(10)]
    with api.browser() as client:
        for name in names:
            assert client.post("/v1/decide", json={"anonymous_id": "a-m", "placements": [name]}).status_code == 200
        refused = client.post("/v1/decide", json={"anonymous_id": "a-m", "placements": ["x" * 65]})
        spaced = client.post("/v1/decide", json={"anonymous_id": "a-m", "placements": ["home hero"]})
        metrics = client.get("/metrics").text
    assert refused.status_code == 422 and refused.json()["field"] == "placements[0]"
    assert spaced.status_code == 422
    assert 'placement="(unknown)"' in metrics
    assert not any(name in metrics for name in names)


def test_a_non_ascii_signature_is_403_not_500(api):
    with api.browser() as client:
        answer = client.post("/v1/decide", json={"user_id": "u-ada", "user_sig": "é" * 64,
                                                 "placements": ["home_hero"]})
    assert answer.status_code == 403 and "user_sig" in answer.json()["error"]


def test_json_nested_a_thousand_deep_is_400(api):
    deep = "[" * 1000 + "]" * 1000
    body = '{"events": [{"id": "d", "type": "t", "anonymous_id": "a", "properties": {"k": ' + deep + "}}]}"
    with api.browser() as client:
        answer = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        decide = client.post("/v1/decide", content='{"placements": ["x"], "context": {"k": ' + deep + "}}")
    assert answer.status_code == 400 and "deep" in answer.json()["error"]
    assert decide.status_code in (400, 422)


@pytest.mark.parametrize("value", ["18446744073709551616", "-9223372036854775809", "1e400"])
def test_numbers_past_64_bits_or_infinite_are_422(api, value):
    body = json.dumps(events(k=0)).replace('"k": 0', f'"k": {value}')
    with api.browser() as client:
        answer = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        decide = client.post("/v1/decide", content='{"anonymous_id": "a", "placements": ["home_hero"], '
                                                   '"context": {"n": ' + value + "}}")
    assert answer.status_code == 422 and answer.json()["field"].startswith("events[0].properties")
    assert decide.status_code == 422


def test_a_body_that_stops_arriving_is_408(strict_api):
    with socket.create_connection(("127.0.0.1", strict_api.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Attimo-Key: " + SITE_KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\":")
        started = time.monotonic()
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 3


def test_headers_that_never_end_close_the_connection(strict_api):
    with socket.create_connection(("127.0.0.1", strict_api.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 3


def test_a_body_left_unread_after_an_early_answer_is_still_cut_off(strict_api):
    """A 401 answers before the body is read; the rest of that body must not
    hold the connection open with no timer."""
    with socket.create_connection(("127.0.0.1", strict_api.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
        sock.sendall(b"{")  # then nothing more
        started = time.monotonic()
        while sock.recv(4096):
            pass  # until the server closes it
    assert time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 3


def test_a_storm_of_half_sent_bodies_and_disconnects_leaves_the_api_answering(strict_api):
    sockets = []
    try:
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", strict_api.port), timeout=5)
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Attimo-Key: " + SITE_KEY.encode()
                         + b"\r\nContent-Length: 1000\r\n\r\n{" + str(n).encode())
            sockets.append(sock)
        started = time.monotonic()
        assert httpx.get(f"{strict_api.base_url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: httpx.get(f"{strict_api.base_url}/healthz", timeout=5).status_code == 200)
    time.sleep(0.2)  # let the server log the disconnects
    log = strict_api.log_path.read_text(errors="replace")
    assert "Traceback" not in log


def test_public_error_bodies_name_no_host(redis_server, tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    server = start_api(f"redis://127.0.0.1:{port}/0", tmp_path)
    try:
        with server.browser() as client:
            answer = client.post("/v1/events", json=events(page="home"))
            ready = client.get("/readyz")
            person = client.post("/v1/events", json={"events": [{
                "id": "s-1", "type": "identify", "user_id": "u-ada", "user_sig": signed("u-ada")}]})
        for reply in (answer, ready, person):
            assert reply.status_code == 503
            assert "127.0.0.1" not in reply.text and str(port) not in reply.text
        assert answer.headers["Retry-After"] == "1"
    finally:
        stop_api(server)
