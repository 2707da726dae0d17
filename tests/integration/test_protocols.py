"""Protocols: line and chunk framing, and the tutorials' own clients, which send
a message with no line end and wait for the answer."""
import json
import os
import re
import socket

import pytest

from conftest import Client, Forkd, IS_ROOT, free_port, wait_until

SRCDIR = os.environ.get("FORKD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def shipped(tmp_path, name):
    """Start forkd on a shipped file, every port moved to a free one.
    Returns (forkd, {shipped port: port used})."""
    with open(os.path.join(SRCDIR, "etc", name)) as f:
        text = f.read()
    ports = {}

    def move(m):
        old = int(m.group(1))
        ports.setdefault(old, free_port())
        return f"port = {ports[old]};"
    text = "\n".join(l if l.lstrip().startswith("#") else
                     re.sub(r"port = (\d+);", move, l) for l in text.split("\n"))
    text = text.replace('"0.0.0.0"', '"127.0.0.1"').replace('"::"', '"::1"')
    if IS_ROOT:
        text = re.sub(r'(?m)^user = .*$', 'user = "nobody";', text)
        text = re.sub(r'(?m)^group = .*$', 'group = "nogroup";', text)
    d = Forkd(tmp_path, [{"service": "echo"}])
    with open(d.conf, "w") as f:
        f.write(text)
    d.start()
    return d, ports


@pytest.fixture
def shipped_factory(tmp_path):
    made = []

    def make(name):
        sub = tmp_path / f"s{len(made)}"
        sub.mkdir()
        d, ports = shipped(sub, name)
        made.append(d)
        return d, ports
    yield make
    for d in made:
        d.stop()


def tutorial_client(port, message, host="127.0.0.1"):
    """What the tutorials' clients do: connect, send the message with no line
    end, read once (recv(1024)) and return what came back."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(message.encode())
        return s.recv(1024).decode()


def session(port, messages, until_eof=False):
    """One connection, one message at a time without line ends, each answer
    read before the next is sent (as an interactive tutorial client does);
    with until_eof, also what comes after the last answer, up to the close."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for m in messages:
            s.sendall(m.encode())
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            out.append(data.decode())
        rest = s.recv(1024) if until_eof else None
    return out, rest


def test_chunk_answers_a_message_without_line_end(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "chunk"},
                       {"service": "calc", "protocol": "chunk"}])
    assert tutorial_client(d.port, "hello") == "Echo: hello\r\n"
    assert tutorial_client(d.ports["calc"], "67") == "4489\r\n"
    assert tutorial_client(d.ports["calc"], "add,7,4") == "11\r\n"
    # telnet-style lines are still lines, one answer each
    c = d.client()
    c.send("a\r\nb\nc")
    assert [c.line(), c.line(), c.line()] == ["Echo: a", "Echo: b", "Echo: c"]
    # a trailing line end is never part of the request
    c.send("tail\r\n")
    assert c.line() == "Echo: tail"
    # quit without a line end ends the session
    c.send("quit")
    assert c.line() == "Bye"
    assert c.eof()


def test_line_waits_for_the_line_end(forkd_factory):
    """The default protocol: a message without a line end is not a request yet."""
    d = forkd_factory([{"service": "echo"}])
    c = d.client()
    c.send("hel")
    with pytest.raises(socket.timeout):
        c.sock.settimeout(0.3)
        c.sock.recv(100)
    c.send("lo\n")
    assert c.line() == "Echo: hello"


def test_chunk_keeps_max_line(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "chunk"}], max_line=100,
                      max_output=4096)
    c = d.client()
    c.send("x" * 150)
    assert c.line() == "ERR line too long (max 100 bytes)"
    c.send("short")
    assert c.line() == "Echo: short"


def test_listener_settings_override_the_service_group(forkd_factory):
    d = forkd_factory([{"service": "echo", "protocol": "chunk"},
                       {"service": "echo", "protocol": "chunk", "echo": {"prefix": ""}}],
                      echo={"prefix": "Echo: "})
    plain = d.listeners[1]["port"]
    assert tutorial_client(d.port, "hi") == "Echo: hi\r\n"
    assert tutorial_client(plain, "hi") == "hi\r\n"


def test_stats_count_sessions_and_requests_by_protocol(forkd_factory):
    d = forkd_factory([{"service": "stats"}, {"service": "echo", "protocol": "chunk"}])
    echo = d.listeners[1]["port"]
    for i in range(3):
        assert tutorial_client(echo, f"m{i}") == f"Echo: m{i}\r\n"
    st = d.client()

    def stats():
        st.send("stats\n")
        return dict(l.split(" ", 2)[1:] for l in st.lines_until("END")[:-1])
    s = wait_until(lambda: (lambda s: s if s["protocol.chunk.total_connections"] == "3"
                            and s["protocol.chunk.curr_connections"] == "0" else None)(stats()),
                   what="three closed chunk sessions")
    assert s["protocol.chunk.requests"] == "3"
    assert s["protocol.line.curr_connections"] == "1"
    assert s["protocol.line.total_connections"] == "1"


def test_the_shipped_config_answers_the_tutorial_clients(shipped_factory):
    """000's client on 5002 and 002's practice clients on 5004 (the shipped
    calc port), unchanged; telnet keeps working on both."""
    d, ports = shipped_factory("forkd.conf")
    assert tutorial_client(ports[5002], "hello") == "Echo: hello\r\n"
    out, rest = session(ports[5002], ["hello", "world", "q"])
    assert out == ["Echo: hello\r\n", "Echo: world\r\n", "Echo: q\r\n"]
    assert tutorial_client(ports[5004], "67") == "4489\r\n"
    assert tutorial_client(ports[5004], "add,7,4") == "11\r\n"
    for port, ask, want in ((ports[5002], "hello", "Echo: hello"),
                            (ports[5004], "add 7 4", "11")):
        c = Client(port)
        assert c.ask(ask) == want
        assert c.ask("quit") == "Bye"
        assert c.eof()


def test_tutorials_conf_is_valid():
    import subprocess
    from conftest import FORKD
    path = os.path.join(SRCDIR, "etc", "tutorials.conf")
    r = subprocess.run([FORKD, "-t", "-c", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


def test_every_tutorial_on_its_own_port(shipped_factory):
    d, ports = shipped_factory("tutorials.conf")
    assert set(ports) >= {5002, 5008, 6000, 10001, 8000}
    # 000: the threaded echo server's client
    assert tutorial_client(ports[5002], "hello") == "Echo: hello\r\n"
    # 003: words come back as sent; "quit" ends the session
    out, rest = session(ports[5008], ["hello there", "quit"], until_eof=True)
    assert out == ["hello there\r\n", "Bye\r\n"]
    assert rest == b""
    # 002: the practice clients
    assert tutorial_client(ports[6000], "67") == "4489\r\n"
    assert tutorial_client(ports[6000], "add,7,4") == "11\r\n"
    # 004: sendall('ping from client'), and telnet's "exit"
    assert tutorial_client(ports[10001], "ping from client") == "ping from client\r\n"
    c = Client(ports[10001])
    assert c.ask("exit") == "Bye"
    assert c.eof()
    # 001: the WebSocket room at /websock1/, with its client's library
    try:
        import websocket
    except ImportError:
        pytest.skip("python3-websocket (websocket-client) is not installed: "
                    "the WebSocket room of tutorials.conf is NOT tested")
    ws = websocket.create_connection(f"ws://127.0.0.1:{ports[8000]}/websock1/", timeout=5)
    try:
        ws.send("hello")
        while True:
            m = json.loads(ws.recv())
            if "payload" in m:
                break
        assert m["payload"]["message"] == "hello"
        assert m["payload"]["room"] == "websock1"
    finally:
        ws.close()
