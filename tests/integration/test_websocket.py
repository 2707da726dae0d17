"""WebSocket listeners: real clients (websockets, websocket-client) and raw
sockets that send what a broken or hostile client would, each answered with
the exact HTTP status or close code."""
import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time

import pytest

from conftest import Client, wait_until

try:
    import websockets
    import websockets.exceptions
except ImportError:  # pragma: no cover - the test says so loudly
    websockets = None
try:
    import websocket as wsclient
except ImportError:  # pragma: no cover
    wsclient = None

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MAX_LINE = 200


def accept_of(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


@pytest.fixture
def wsd(forkd_factory):
    """echo, calc and stats over websocket, and echo over telnet lines."""
    d = forkd_factory(
        [{"service": "echo", "protocol": "websocket"},
         {"service": "calc", "protocol": "websocket"},
         {"service": "stats", "protocol": "websocket"},
         {"service": "echo", "protocol": "line"}],
        workers=2, threads=4, max_line=MAX_LINE)
    d.ws = d.listeners[0]["port"]
    d.calc = d.listeners[1]["port"]
    d.stats = d.listeners[2]["port"]
    d.line = d.listeners[3]["port"]
    return d


def need(mod, name):
    if mod is None:
        pytest.skip(f"{name} is not installed (Debian: python3-{name}): "
                    "this test needs a real client")


# ---- a raw client: frames built by hand ----

def frame(op, payload=b"", fin=True, mask=True, rsv=0, key=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | op])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


class Raw:
    """A TCP client that speaks the handshake and frames itself."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.port = port

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def http(self, request):
        """Send a request head; return (status, headers, body) of the answer."""
        self.send(request.encode() if isinstance(request, str) else request)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", 0))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def handshake(self, extra=""):
        status, headers, _ = self.http(
            "GET /chat HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n")
        assert status == 101, status
        assert headers["sec-websocket-accept"] == accept_of(KEY)
        return self

    def frame(self):
        """(fin, opcode, payload) of the next server frame; it must not be masked."""
        while len(self.buf) < 2:
            self._fill()
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames are not masked"
        assert b0 & 0x70 == 0, "no RSV bits"
        n, off = b1 & 0x7f, 2
        if n == 126:
            while len(self.buf) < 4:
                self._fill()
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            while len(self.buf) < 10:
                self._fill()
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        while len(self.buf) < off + n:
            self._fill()
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0f, payload

    def text(self):
        fin, op, payload = self.frame()
        assert (fin, op) == (True, 1), (fin, op, payload)
        return payload.decode()

    def close_code(self):
        """The code of the server's close frame (None: no code), then EOF."""
        while True:
            fin, op, payload = self.frame()
            if op == 8:
                break
            assert op in (1, 9, 10), (op, payload)
        assert len(payload) != 1
        code = struct.unpack(">H", payload[:2])[0] if payload else None
        self.reason = payload[2:].decode()
        self.eof()
        return code

    def eof(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self):
        self.sock.close()


def ws_close_after(d, data, port=None):
    r = Raw(port or d.ws).handshake()
    r.send(data)
    return r.close_code()


# ---- real clients ----

def test_websockets_client_echo_calc_stats(wsd):
    need(websockets, "websockets")

    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{wsd.ws}/") as ws:
            await ws.send("hello")
            assert await ws.recv() == "Echo: hello"
            await ws.send("h\u00e9llo \u20ac \U0001f600")
            assert await ws.recv() == "Echo: h\u00e9llo \u20ac \U0001f600"
            await ws.send("quit")
            assert await ws.recv() == "Bye"
            await ws.wait_closed()
            assert ws.close_code == 1000
        async with websockets.connect(f"ws://127.0.0.1:{wsd.calc}/") as ws:
            await ws.send("add 2 3")
            assert await ws.recv() == "5"
        async with websockets.connect(f"ws://127.0.0.1:{wsd.stats}/") as ws:
            await ws.send("stats")
            lines = []
            while True:
                l = await ws.recv()
                lines.append(l)
                if l == "END":
                    break
            assert any(l.startswith("STAT version ") for l in lines), lines
    asyncio.run(asyncio.wait_for(talk(), 20))


def test_websocket_client_echo_and_calc(wsd):
    need(wsclient, "websocket")
    # websocket-client sends Origin: http://127.0.0.1:PORT, the Host's own
    ws = wsclient.create_connection(f"ws://127.0.0.1:{wsd.ws}/", timeout=5)
    ws.send("hello")
    assert ws.recv() == "Echo: hello"
    ws.send("x" * MAX_LINE)
    assert ws.recv() == "Echo: " + "x" * MAX_LINE
    ws.close()
    ws = wsclient.create_connection(f"ws://127.0.0.1:{wsd.calc}/", timeout=5)
    ws.send("mul 6 7")
    assert ws.recv() == "42"
    ws.close()


def test_line_listener_beside_is_unaffected(wsd):
    c = Client(wsd.line)
    assert c.ask("hello") == "Echo: hello"
    r = Raw(wsd.ws).handshake()
    r.send(frame(1, b"from ws"))
    assert r.text() == "Echo: from ws"
    assert c.ask("still here") == "Echo: still here"
    # a websocket handshake on the line listener is just lines to echo
    c.send("GET / HTTP/1.1\r\n")
    assert c.line() == "Echo: GET / HTTP/1.1"


# ---- the handshake ----

def upgrade_request(port, version="13", key=KEY, extra="", method="GET",
                    proto="HTTP/1.1", upgrade="websocket", connection="Upgrade"):
    return (f"{method} / {proto}\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: {upgrade}\r\nConnection: {connection}\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n"
            f"{extra}\r\n")


def status_of(port, request):
    r = Raw(port)
    status, headers, body = r.http(request)
    r.eof()
    r.close()
    return status, headers, body


def test_handshake_answers(wsd):
    r = Raw(wsd.ws)
    r.handshake(extra="Connection: keep-alive\r\n")
    r.send(frame(1, b"ok"))
    assert r.text() == "Echo: ok"
    # tokens in lists, any case
    r = Raw(wsd.ws)
    status, headers, _ = r.http(upgrade_request(
        wsd.ws, connection="keep-alive, upgrade", upgrade="WebSocket"))
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"


def test_handshake_wrong_version_is_426_with_the_version(wsd):
    for v in ("8", "12", "14", "x"):
        status, headers, _ = status_of(wsd.ws, upgrade_request(wsd.ws, version=v))
        assert status == 426
        assert headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize("key", [
    "", "short", "dGhlIHNhbXBsZSBub25jZQ",          # not 24 characters
    "dGhlIHNhbXBsZSBub25jZQ=!", "dGhlIHNhbXBsZSBub25j====",  # not 16 bytes of base64
    base64.b64encode(b"x" * 17).decode()])
def test_handshake_bad_key_is_400(wsd, key):
    assert status_of(wsd.ws, upgrade_request(wsd.ws, key=key))[0] == 400


def test_handshake_missing_tokens_or_old_http_is_400(wsd):
    assert status_of(wsd.ws, upgrade_request(wsd.ws, connection="keep-alive"))[0] == 400
    assert status_of(wsd.ws, upgrade_request(wsd.ws, upgrade="h2c"))[0] == 400
    assert status_of(wsd.ws, upgrade_request(wsd.ws, proto="HTTP/1.0"))[0] == 400


def test_other_methods_are_405_plain_get_is_426(wsd):
    status, headers, _ = status_of(wsd.ws, upgrade_request(wsd.ws, method="POST"))
    assert status == 405 and headers["allow"] == "GET"
    assert status_of(wsd.ws, "DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 405
    status, headers, body = status_of(wsd.ws, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 426
    assert b"WebSocket" in body
    assert headers["connection"] == "close"


def test_malformed_and_wrong_protocol_heads(wsd):
    assert status_of(wsd.ws, "GARBAGE\r\n\r\n")[0] == 400
    assert status_of(wsd.ws, "GET / HTTP/2.0\r\n\r\n")[0] == 505
    assert status_of(wsd.ws, "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")[0] == 400


def test_request_head_over_max_header_is_431(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket", "max_header": 1024}],
                      workers=1, threads=2)
    big = upgrade_request(d.port, extra="X-Pad: " + "a" * 1100 + "\r\n")
    assert status_of(d.port, big)[0] == 431
    # just under the limit is fine
    req = upgrade_request(d.port)
    pad = 1024 - len(req) - len("X-Pad: \r\n")
    r = Raw(d.port)
    status, _, _ = r.http(upgrade_request(d.port, extra="X-Pad: " + "a" * pad + "\r\n"))
    assert status == 101


def test_a_refusal_is_read_even_when_the_client_sends_much_more(forkd_factory):
    """A client that goes on sending a huge head after the server refused it
    still reads the 431: the server reads and drops the rest before its
    close, so the close is not a reset that would destroy the answer."""
    d = forkd_factory([{"service": "echo", "protocol": "websocket", "max_header": 1024}],
                      workers=1, threads=2)
    s = socket.socket()
    # small buffers, so the client is still sending when the server answers
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    s.settimeout(10)
    s.connect(("127.0.0.1", d.port))
    s.sendall(upgrade_request(d.port, extra="X-Pad: " + "a" * 600000 + "\r\n").encode())
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got.startswith(b"HTTP/1.1 431 "), got[:100]


def test_unfinished_request_head_is_cut(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket", "header_timeout": 1}],
                      workers=1, threads=2, idle_timeout=60)
    r = Raw(d.port, timeout=10)
    t0 = time.monotonic()
    r.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    status, _, _ = r.http(b"")
    assert status == 408
    assert r.eof()
    # cut by header_timeout (1 s), long before idle_timeout (60 s)
    assert time.monotonic() - t0 < 30
    # a connection that sends nothing at all is cut too
    r = Raw(d.port, timeout=10)
    assert r.eof()


def test_origin_must_match_host_by_default(wsd):
    p = wsd.ws
    Raw(p).handshake(extra=f"Origin: http://127.0.0.1:{p}\r\n")
    Raw(p).handshake(extra=f"Origin: https://127.0.0.1:{p}\r\n")
    Raw(p).handshake()      # no Origin: not a browser
    for origin in ("http://evil.example", f"http://127.0.0.2:{p}", "null",
                   f"http://127.0.0.1:{p + 1}", "http://127.0.0.1"):
        status, _, _ = status_of(p, upgrade_request(p, extra=f"Origin: {origin}\r\n"))
        assert status == 403, origin
    wait_until(lambda: "evil.example" in wsd.log(), what="the refusal in the log")


def test_allowed_origins(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket",
                        "allowed_origins": ["https://a.example", "http://b.example:8080"]}],
                      workers=1, threads=2)
    p = d.port
    for origin in ("https://a.example", "http://b.example:8080"):
        r = Raw(p)
        status, _, _ = r.http(upgrade_request(p, extra=f"Origin: {origin}\r\n"))
        assert status == 101, origin
    for origin in (f"http://127.0.0.1:{p}", "https://b.example:8080", "https://a.example.evil"):
        assert status_of(p, upgrade_request(p, extra=f"Origin: {origin}\r\n"))[0] == 403
    wait_until(lambda: "a.example.evil" in d.log(), what="the refusal in the log")


def test_allowed_origins_star_lets_any_origin_in(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket",
                        "allowed_origins": ["*"]}], workers=1, threads=2)
    r = Raw(d.port).handshake(extra="Origin: https://anywhere.example\r\n")
    r.send(frame(1, b"hi"))
    assert r.text() == "Echo: hi"


# ---- frames ----

@pytest.mark.parametrize("name,data", [
    ("unmasked", frame(1, b"hello", mask=False)),
    ("rsv1", frame(1, b"hello", rsv=4)),
    ("rsv2", frame(1, b"hello", rsv=2)),
    ("rsv3", frame(1, b"hello", rsv=1)),
    ("opcode 3", frame(3, b"x")),
    ("opcode 0xB", frame(0xB, b"x")),
    ("ping over 125", frame(9, b"p" * 126)),
    ("close over 125", frame(8, close_payload(1000, b"r" * 124))),
    ("fragmented ping", frame(9, b"p", fin=False)),
    ("lone continuation", frame(0, b"x")),
    ("text inside a fragmented message", frame(1, b"a", fin=False) + frame(1, b"b")),
    ("binary inside a fragmented message", frame(1, b"a", fin=False) + frame(2, b"b")),
    ("length not in its shortest form", b"\x81\xfe\x00\x05\x00\x00\x00\x00hello"),
])
def test_protocol_errors_close_1002(wsd, name, data):
    assert ws_close_after(wsd, data) == 1002, name


def test_fragments_are_reassembled_and_pings_answered_between(wsd):
    r = Raw(wsd.ws).handshake()
    r.send(frame(1, b"hel", fin=False) + frame(9, b"now") + frame(0, b"lo", fin=False))
    # the pong comes before the message is complete
    assert r.frame() == (True, 10, b"now")
    r.send(frame(0, b" world"))
    assert r.text() == "Echo: hello world"
    # a code point cut between two fragments
    r.send(frame(1, "caf\u00e9 \u20ac".encode()[:6], fin=False) +
           frame(0, "caf\u00e9 \u20ac".encode()[6:]))
    assert r.text() == "Echo: caf\u00e9 \u20ac"


@pytest.mark.parametrize("name,data", [
    ("invalid byte", frame(1, b"ab\xffcd")),
    ("surrogate", frame(1, b"\xed\xa0\x80")),
    ("overlong", frame(1, b"\xc0\xaf")),
    ("truncated at the end", frame(1, b"ok \xe2\x82")),
    ("invalid across fragments", frame(1, b"a\xe2", fin=False) + frame(0, b"\x28\xa1")),
])
def test_invalid_utf8_closes_1007(wsd, name, data):
    assert ws_close_after(wsd, data) == 1007, name


def test_message_over_max_line_closes_1009(wsd):
    assert ws_close_after(wsd, frame(1, b"x" * (MAX_LINE + 1))) == 1009
    # also when only the fragments together are too long
    half = MAX_LINE // 2 + 1
    assert ws_close_after(wsd, frame(1, b"x" * half, fin=False) +
                          frame(0, b"y" * half)) == 1009
    # a frame that announces a huge length is refused with its first bytes
    r = Raw(wsd.ws).handshake()
    r.send(b"\x82\xff" + struct.pack(">Q", 1 << 40) + b"\0\0\0\0" + b"x" * 100)
    assert r.close_code() == 1009


def test_binary_is_refused_1003_by_a_text_service(wsd):
    assert ws_close_after(wsd, frame(2, b"\x00\x01"), port=wsd.calc) == 1003


def test_echo_returns_binary_as_binary(wsd):
    """Every byte comes back in one binary message, line ends and all, and the
    session goes on with text."""
    need(websockets, "websockets")
    payload = bytes(range(64)) + b"\r\nafter a line end\n\xff\xfe"

    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{wsd.ws}/") as ws:
            await ws.send(payload)
            got = await ws.recv()
            assert isinstance(got, bytes)
            assert got == b"Echo: " + payload
            await ws.send("text again")
            assert await ws.recv() == "Echo: text again"
    asyncio.run(asyncio.wait_for(talk(), 20))


# ---- the close handshake ----

@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 4999])
def test_peer_close_is_answered_with_its_code(wsd, code):
    r = Raw(wsd.ws).handshake()
    r.send(frame(1, b"before") + frame(8, close_payload(code, b"bye now")))
    assert r.text() == "Echo: before"
    assert r.close_code() == code


def test_empty_close_is_answered_empty(wsd):
    assert ws_close_after(wsd, frame(8, b"")) is None


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes_are_1002(wsd, code):
    assert ws_close_after(wsd, frame(8, close_payload(code))) == 1002


REASON = "d\u00e9j\u00e0 vu \u20ac".encode()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """An echo websocket listener that takes 4 KiB messages, for a module."""
    from conftest import Forkd, sanitizer_reports
    d = Forkd(tmp_path_factory.mktemp("wide"),
              [{"service": "echo", "protocol": "websocket"}],
              workers=1, threads=2, max_line=4096)
    d.start()
    yield d
    d.stop()
    assert not sanitizer_reports(d.log())


@pytest.mark.parametrize("cut", range(1, 16))
def test_close_reason_cut_anywhere_is_still_valid(wide, cut):
    """A close frame whose byte `cut` is the 4097th of the stream: libwslay
    reads into a 4 KiB buffer and checks a close reason chunk by chunk."""
    r = Raw(wide.port).handshake()
    filler = frame(1, b"f" * (4096 - cut - 8))     # 4-byte length, 4-byte mask
    assert len(filler) == 4096 - cut
    r.send(filler + frame(8, close_payload(1000, REASON)))
    assert r.text() == "Echo: " + "f" * (4096 - cut - 8)
    assert r.close_code() == 1000


@pytest.mark.parametrize("cut", [1, 3, 7, 10, 11, 13])
def test_close_frame_in_two_reads(wsd, cut):
    r = Raw(wsd.ws).handshake()
    close = frame(8, close_payload(1001, REASON))
    r.send(frame(1, b"first") + close[:cut])
    # the reply shows the server has read the first part on its own
    assert r.text() == "Echo: first"
    r.send(close[cut:])
    assert r.close_code() == 1001


def test_close_with_one_byte_is_1002_bad_reason_1007(wsd):
    assert ws_close_after(wsd, frame(8, b"\x03")) == 1002
    assert ws_close_after(wsd, frame(8, close_payload(1000, b"\xc3\x28"))) == 1007


def test_quit_says_bye_then_closes_1000(wsd):
    for word in (b"quit", b"exit"):
        r = Raw(wsd.ws).handshake()
        r.send(frame(1, word) + frame(1, b"not answered"))
        assert r.text() == "Bye"
        assert r.close_code() == 1000


def test_shutdown_closes_1001(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket"}], workers=1, threads=2)
    r = Raw(d.port).handshake()
    r.send(frame(1, b"hi"))
    assert r.text() == "Echo: hi"
    d.signal(signal.SIGTERM)
    assert r.close_code() == 1001
    assert r.reason == "server shutting down"
    d.wait()


# ---- keep-alive ----

def test_pings_keep_an_answering_peer_and_cut_a_silent_one(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket", "ping_interval": 1}],
                      workers=1, threads=2, idle_timeout=2)
    r = Raw(d.port, timeout=10).handshake()
    t0 = time.monotonic()
    pings = 0
    # answer pings for well past idle_timeout: the session stays
    while time.monotonic() - t0 < 4.5:
        fin, op, payload = r.frame()
        assert op == 9, (op, payload)
        pings += 1
        r.send(frame(10, payload))
    assert pings >= 3
    r.send(frame(1, b"still here"))
    while True:
        fin, op, payload = r.frame()
        if op == 1:
            break
        r.send(frame(10, payload))
    assert payload == b"Echo: still here"
    # a peer that stops answering is closed one interval after its ping
    fin, op, payload = r.frame()
    assert op == 9
    code = r.close_code()
    assert code == 1000 and r.reason == "idle timeout"


def test_idle_timeout_without_pings_closes_1000(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "websocket"}],
                      workers=1, threads=2, idle_timeout=1)
    r = Raw(d.port, timeout=10).handshake()
    assert r.close_code() == 1000
    assert r.reason == "idle timeout"


# ---- output from other sessions ----

def test_chat_from_telnet_reaches_websocket_as_valid_utf8(forkd_factory):
    # the chat's text lines, as a WebSocket member with format = "text" gets them
    d = forkd_factory([{"service": "chat", "protocol": "websocket"},
                       {"service": "chat", "protocol": "line"}],
                      workers=1, threads=4, chat={"format": "text"})
    r = Raw(d.listeners[0]["port"]).handshake()
    greeting = r.text()
    assert greeting.startswith("* welcome to forkd chat"), greeting
    r.text()    # the commands line
    t = Client(d.listeners[1]["port"])
    assert t.line().startswith("* welcome to forkd chat")
    assert t.line().startswith("* commands:")
    # the WebSocket member asked for /chat: that is its room
    t.send("/join chat\n")
    assert t.line() == "* you joined chat"
    # what telnet sends need not be UTF-8; what a browser gets must be
    t.send(b"caf\xc3\xa9 \xff\xfe end\n")
    while True:
        l = r.text()
        if "end" in l:
            break
    assert l.endswith("caf\u00e9 \ufffd\ufffd end"), l


def test_tutorial_client_chats_in_a_room(forkd_factory):
    """websocket-client's WebSocketApp, as the chat tutorial's client runs it,
    on ws://HOST:PORT/websock1/: what one member sends reaches the other, in
    the JSON the chat gives WebSocket members."""
    need(wsclient, "websocket")
    import threading
    d = forkd_factory([{"service": "chat", "protocol": "websocket"}], workers=2, threads=4)
    url = f"ws://127.0.0.1:{d.port}/websock1/"
    got = {"a": [], "b": []}
    closed = {}
    apps = {}

    def run(name):
        app = wsclient.WebSocketApp(
            url,
            on_message=lambda ws, msg: got[name].append(msg),
            on_close=lambda ws, code, reason: closed.setdefault(name, code))
        apps[name] = app
        app.run_forever()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in ("a", "b")]
    for t in threads:
        t.start()
    for n in ("a", "b"):
        wait_until(lambda: any(json.loads(m).get("event") == "welcome" for m in got[n]),
                   what=f"{n}'s greeting")
    apps["a"].send("/nick alice")
    wait_until(lambda: any(json.loads(m).get("text") == "you are now alice"
                           for m in got["a"]), what="the new nick")
    apps["a"].send("hello room")
    want = {"payload": {"message": "hello room", "nick": "alice", "room": "websock1"}}
    wait_until(lambda: want in [json.loads(m) for m in got["b"]], what="the message at b")
    apps["b"].send("/quit")
    wait_until(lambda: "b" in closed, what="b's close")
    assert closed["b"] == 1000
    apps["a"].close()
    for t in threads:
        t.join(5)
