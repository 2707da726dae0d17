"""The echo service, as a telnet user sees it."""
from conftest import Client


def test_echo_with_prefix(forkd):
    c = forkd.client()
    assert c.ask("hello") == "Echo: hello"
    c.send("crlf too\r\n")
    assert c.line() == "Echo: crlf too"
    c.send("two\nlines\n")
    assert c.line() == "Echo: two"
    assert c.line() == "Echo: lines"


def test_bytes_pass_through_unchanged(forkd):
    c = forkd.client()
    payload = b"caf\xc3\xa9 \x00 \x01\x7f \xff\xfe tab\there \r mid"
    c.send(payload + b"\n")
    c.sock.settimeout(5)
    data = b""
    while not data.endswith(b"\r\n"):
        data += c.sock.recv(4096)
    assert data == b"Echo: " + payload + b"\r\n"


def test_quit_and_exit_say_bye_and_close(forkd):
    for word in ("quit", "exit", "QUIT", "quit  ", "exit\r"):
        c = forkd.client()
        assert c.ask("first") == "Echo: first"
        c.send(word + "\nnot answered\n")
        assert c.line() == "Bye"
        assert c.eof()


def test_line_too_long_is_refused_and_session_goes_on(forkd_factory):
    d = forkd_factory(workers=1, threads=2, max_line=100)
    c = d.client()
    c.send("x" * 101 + "\n")
    assert c.line() == "ERR line too long (max 100 bytes)"
    assert c.ask("y" * 100) == "Echo: " + "y" * 100
    # a huge line arriving in pieces: one error, then the session continues
    for _ in range(50):
        c.send("z" * 10000)
    c.send("\n")
    assert c.line() == "ERR line too long (max 100 bytes)"
    assert c.ask("still here") == "Echo: still here"


def test_custom_and_empty_prefix(forkd_factory):
    d = forkd_factory(workers=1, echo={"prefix": ">> "})
    assert d.client().ask("hi") == ">> hi"
    d2 = forkd_factory(workers=1, echo={"prefix": ""})
    assert d2.client().ask("plain") == "plain"


def test_ipv6_listener(forkd_factory):
    d = forkd_factory([{"service": "echo", "address": "::1"}], workers=1)
    c = Client(d.port, host="::1")
    assert c.ask("v6") == "Echo: v6"
