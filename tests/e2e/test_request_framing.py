"""Every request is metered, whatever its framing: a request that ends with
trailers (HTTP/2, or headers followed directly by trailers) is refused
Bedrock-style before anything reaches Bedrock or the ledger, and an HTTP/1.1
chunked request with trailers is metered like any other."""

import json
import socket
import ssl
from decimal import Decimal

import h2.config
import h2.connection
import h2.events
import pytest

from harness import CA

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]}).encode()


def tls_socket(port: int, alpn: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.set_alpn_protocols([alpn])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                           server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == alpn
    return sock


def h2_request(port: int, key: str, body: bytes | None, trailers: list[tuple[str, str]]):
    """One HTTP/2 POST whose stream ends with trailers; returns (headers, body)."""
    sock = tls_socket(port, "h2")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", f"/model/{HAIKU}/converse"),
                          (":authority", "127.0.0.1"), (":scheme", "https"),
                          ("content-type", "application/json"), ("authorization", f"Bearer {key}")])
    if body:
        conn.send_data(1, body)
    conn.send_headers(1, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    headers, data, done = {}, b"", False
    while not done:
        chunk = sock.recv(65536)
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        sock.sendall(conn.data_to_send())
    sock.close()
    return headers, data


@pytest.mark.parametrize("body", [BODY, None], ids=["body-then-trailers", "headers-then-trailers"])
def test_http2_request_with_trailers_is_refused_and_not_forwarded(stack, tenant_id, body):
    key = stack.create_tenant(tenant_id, budget="5.00")
    stack.clear_emulator()
    headers, data = h2_request(stack.listener, key, body, [("x-checksum", "abc")])
    assert headers.get(":status") == "400", (headers, data)
    assert headers["x-amzn-errortype"] == "ValidationException"
    assert "trailers" in json.loads(data)["message"]
    assert stack.emulator_requests() == []
    b = stack.tenant(tenant_id)["balance"]
    assert Decimal(b["spent_usd"]) == 0 and Decimal(b["reserved_usd"]) == 0 and b["requests"] == 0


def test_http1_chunked_request_with_trailers_is_metered(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="5.00")
    stack.clear_emulator()
    sock = tls_socket(stack.listener, "http/1.1")
    head = (f"POST /model/{HAIKU}/converse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n")
    chunk = f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n"
    sock.sendall(head.encode() + chunk + b"0\r\nx-checksum: abc\r\n\r\n")
    raw = b""
    while True:
        part = sock.recv(65536)
        if not part:
            break
        raw += part
    sock.close()
    status = int(raw.split(b" ", 2)[1])
    if status == 200:
        # Envoy drops HTTP/1.1 trailers unless enabled; the request was metered.
        assert len(stack.emulator_requests()) == 1
        t = stack.settled(tenant_id, 1)
        assert Decimal(t["balance"]["spent_usd"]) > 0
    else:
        assert status == 400, raw[:500]
        assert stack.emulator_requests() == []
