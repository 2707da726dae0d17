"""Chat over WebSocket with the websocket-client library (python3-websocket,
what the Django Channels chat tutorial's client uses), against a listener
like the shipped one: plain text and JSON reach telnet and WebSocket
members of the same room, whichever worker holds them; the chat page is
served on a plain GET; slow WebSocket members are dropped like slow telnet
members."""
import json
import os
import re
import socket
import threading

import pytest

from conftest import Client, free_port, owner, wait_until

websocket = pytest.importorskip(
    "websocket", reason="SKIPPED LOUDLY: python3-websocket (websocket-client) is missing")

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(HERE, "..", "..", "etc", "forkd.conf")


def shipped_ws_listener():
    """The shipped configuration's WebSocket chat listener, as a dict."""
    with open(SHIPPED) as f:
        text = f.read()
    m = re.search(r'\{\s*address = "([^"]+)";\s*port = (\d+);\s*service = "chat";\s*'
                  r'protocol = "websocket";\s*\}', text)
    assert m, "etc/forkd.conf has no WebSocket chat listener"
    return {"address": m.group(1), "port": int(m.group(2)), "service": "chat",
            "protocol": "websocket"}


@pytest.fixture
def chat(forkd_factory):
    """The shipped WebSocket chat listener (on a free loopback port) and a
    telnet chat listener, two workers."""
    ws = shipped_ws_listener()
    assert ws["port"] == 8000 and ws["address"] == "0.0.0.0"
    ws.update(address="127.0.0.1", port=free_port())
    d = forkd_factory([ws, {"service": "chat", "port": free_port()}], workers=2, threads=4)
    d.ws_port = d.listeners[0]["port"]
    d.line_port = d.listeners[1]["port"]
    return d


class WsMember:
    def __init__(self, d, path="/websock1/"):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{d.ws_port}{path}", timeout=10)
        self.sock = self.ws.sock		# for conftest.owner()
        self.welcome = self.next()
        assert self.welcome["event"] == "welcome", self.welcome
        self.nick = self.welcome["nick"]

    def next(self):
        return json.loads(self.ws.recv())

    def until(self, pred, what):
        seen = []
        while True:
            try:
                o = self.next()
            except websocket.WebSocketTimeoutException:
                raise AssertionError(f"timed out waiting for {what}; got {seen}")
            if pred(o):
                return o
            seen.append(o)

    def payload(self, message):
        return self.until(lambda o: o.get("payload", {}).get("message") == message,
                          f"payload {message!r}")["payload"]


def telnet(d, room="websock1", nick=None):
    c = Client(d.line_port)
    assert c.line().startswith("* welcome to forkd chat")
    c.line()
    c.send(f"/join {room}\n")
    while c.line() != f"* you joined {room}":
        pass
    if nick:
        c.send(f"/nick {nick}\n")
        while c.line() != f"* you are now {nick}":
            pass
    return c


def telnet_until(c, want):
    seen = []
    while True:
        l = c.line(10)
        assert l is not None, f"EOF waiting for {want!r}; got {seen}"
        if l == want:
            return seen
        seen.append(l)


def test_client_of_the_tutorial(chat):
    """websocket.WebSocketApp as the tutorial's client runs it: whatever the
    user typed goes out as plain text."""
    t = telnet(chat, nick="tom")
    peer = WsMember(chat)
    got, opened = [], threading.Event()

    app = websocket.WebSocketApp(
        f"ws://127.0.0.1:{chat.ws_port}/websock1/",
        on_open=lambda ws: opened.set(),
        on_message=lambda ws, msg: got.append(json.loads(msg)))
    th = threading.Thread(target=app.run_forever, daemon=True)
    th.start()
    try:
        assert opened.wait(10)
        wait_until(lambda: any(o.get("event") == "welcome" for o in got), 10, "the welcome")
        me = next(o for o in got if o.get("event") == "welcome")
        assert me["room"] == "websock1"
        app.send("hello")
        telnet_until(t, f"[{me['nick']}] hello")
        assert peer.payload("hello") == {"message": "hello", "nick": me["nick"],
                                         "room": "websock1"}
        app.send(json.dumps({"message": "hello in json"}))
        telnet_until(t, f"[{me['nick']}] hello in json")
        assert peer.payload("hello in json")["nick"] == me["nick"]
        # and back: a telnet line reaches the app as the tutorial's payload
        t.send("hi from telnet\n")
        wait_until(lambda: {"payload": {"message": "hi from telnet", "nick": "tom",
                                        "room": "websock1"}} in got, 10, "tom's line")
    finally:
        app.close()
        th.join(10)
    t.close()


def test_every_worker_renders_for_its_members(chat):
    """A telnet member and WebSocket members on the other worker: the event
    crosses workers once and is rendered there for each form."""
    t = telnet(chat, nick="tom")
    tw = owner(chat, t)
    others, same = [], []
    for _ in range(30):
        m = WsMember(chat)
        (others if owner(chat, m) != tw else same).append(m)
        if others and same:
            break
    assert others, "no WebSocket member landed on the other worker"
    m = others[0]
    m.ws.send("from the other worker")
    telnet_until(t, f"[{m.nick}] from the other worker")
    t.send("to the other worker\n")
    for x in others + same:
        assert x.payload("to the other worker") == {
            "message": "to the other worker", "nick": "tom", "room": "websock1"}
    # one room: /who from telnet lists the WebSocket members too
    t.send("/who\n")
    l = t.line()
    while not l.startswith("* websock1 ("):
        l = t.line()
    names = set(l.split(": ", 1)[1].split(", "))
    assert names == {"tom"} | {x.nick for x in others + same}
    # nicks are unique across both protocols
    m.ws.send(json.dumps({"command": "nick", "arg": "tom"}))
    assert m.until(lambda o: "error" in o, "an error") == {
        "error": "nick 'tom' is taken in websock1: choose another with /nick NAME"}


def test_path_names_the_room(chat):
    assert WsMember(chat, "/").welcome["room"] == "lobby"
    assert WsMember(chat, "/dev").welcome["room"] == "dev"
    assert WsMember(chat, "/dev/?x=1").welcome["room"] == "dev"
    bad = WsMember(chat, "/a/b/")
    assert bad.welcome == {"event": "welcome", "nick": bad.nick, "room": None,
                           "commands": bad.welcome["commands"],
                           "error": "bad room name in the request path"}
    bad.ws.send("anyone?")
    assert bad.until(lambda o: "error" in o, "an error") == {
        "error": "you are in no room: /join ROOM first"}


def http_get(port, path, method="GET"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
              "Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, v in (l.split(": ", 1) for l in lines[1:])}
    return status, headers, body


def test_page_is_served_with_a_strict_policy(chat):
    status, h, body = http_get(chat.ws_port, "/websock1/")
    assert status == 200
    assert h["content-type"] == "text/html; charset=utf-8"
    csp = {d.split()[0]: d.split()[1:] for d in h["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'", "ws:", "wss:"]
    assert h["x-content-type-options"] == "nosniff"
    assert b'<script src="/chat.js"' in body and b"<style" not in body
    assert b"http://" not in body and b"https://" not in body	# nothing from elsewhere
    for path, ctype in (("/chat.js", "text/javascript; charset=utf-8"),
                        ("/chat.css", "text/css; charset=utf-8"),
                        ("/favicon.svg", "image/svg+xml")):
        status, h, body = http_get(chat.ws_port, path)
        assert (status, h["content-type"]) == (200, ctype), path
        assert len(body) == int(h["content-length"]) > 0
    js = http_get(chat.ws_port, "/chat.js")[2].decode()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert http_get(chat.ws_port, "/")[0] == 200
    status, h, body = http_get(chat.ws_port, "/websock1/", "HEAD")
    assert status == 200 and body == b"" and int(h["content-length"]) > 0
    assert http_get(chat.ws_port, "/no/such/page")[0] == 404
    assert http_get(chat.ws_port, "/<script>/")[0] in (400, 404)


def test_slow_websocket_member_is_dropped(forkd_factory):
    port, lport = free_port(), free_port()
    d = forkd_factory([{"service": "chat", "port": port, "protocol": "websocket"},
                       {"service": "chat", "port": lport}],
                      workers=1, threads=2, max_output=16384, send_timeout=30)
    d.ws_port, d.line_port = port, lport
    slow = websocket.WebSocket()
    slow.sock_opt.sockopt = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    slow.connect(f"ws://127.0.0.1:{port}/websock1/", timeout=10)
    first = json.loads(slow.recv())
    t = telnet(d, nick="flood")
    line = "x" * 1000 + "\n"

    def gone():
        t.send(line * 20)
        t.send("/who\n")
        while True:
            l = t.line(10)
            if l.startswith("* websock1 ("):
                return first["nick"] not in l.split(": ", 1)[1].split(", ")
    wait_until(gone, 30, "the slow member to be dropped", interval=0.05)
    # after what it had not read: the end of the connection, with a close
    # frame saying why when the kernel's buffers had room left for it
    code = None
    slow.sock.settimeout(10)
    try:
        while True:
            op, frame = slow.recv_data_frame(True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
                break
    except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
        pass
    assert code in (None, 1008), code
    # the room and the flooder go on
    t.send("/who\n")
    telnet_until(t, "* websock1 (1): flood")


def test_browser_members_and_telnet_members_on_two_hosts(forkd_factory, tmp_path):
    """Chat through Redis: a WebSocket member on one host and a telnet member
    on another share a room; each host renders for its own members, and the
    link notices reach a WebSocket member as JSON."""
    from test_redis import REDIS, Redis
    if REDIS is None:
        pytest.skip("SKIPPED LOUDLY: redis-server is not installed: chat across "
                    "hosts for WebSocket members is NOT tested")
    redis = Redis(tmp_path).start()
    try:
        conf = {"layer": "redis", "redis_address": f"127.0.0.1:{redis.port}",
                "presence_lease": 2, "redis_timeout": 1000}
        hosts = []
        for _ in range(2):
            d = forkd_factory([{"service": "chat", "port": free_port(),
                                "protocol": "websocket"},
                               {"service": "chat", "port": free_port()}],
                              workers=2, threads=4, chat=conf)
            d.ws_port, d.line_port = d.listeners[0]["port"], d.listeners[1]["port"]
            hosts.append(d)
        a, b = hosts
        w = WsMember(a)

        def both_listed():
            t.send("/who\n")
            while True:
                l = t.line(10)
                if l.startswith("* websock1 ("):
                    return set(l.split(": ", 1)[1].split(", ")) == {w.nick, "tom"}
        t = telnet(b, nick="tom")
        wait_until(both_listed, 15, "both hosts' members in /who")
        w.ws.send("across hosts")
        telnet_until(t, f"[{w.nick}] across hosts")
        t.send("and back\n")
        assert w.payload("and back") == {"message": "and back", "nick": "tom",
                                         "room": "websock1"}
        redis.kill()
        o = w.until(lambda o: o.get("event") == "notice", "the link notice")
        assert o["room"] == "websock1"
        assert o["text"].startswith("other hosts are out of reach")
    finally:
        redis.stop()
