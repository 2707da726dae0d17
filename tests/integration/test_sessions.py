"""What every line service shares: line framing, CRLF replies, quit/exit,
the listener banner, idle timeouts and the line length limit."""
import re
import socket
import threading
import time

import pytest

from conftest import wait_until

SERVICES = ["echo", "calc", "chat", "stats"]
CHAT_WELCOME = re.compile(r"\* welcome to forkd chat: you are guest\d+ in room lobby")
CHAT_COMMANDS = "* commands: /nick NAME, /join ROOM, /who, /rooms, /quit"


def greet(c, service):
    """Read what the service says on its own at connect (only chat talks first)."""
    if service == "chat":
        assert CHAT_WELCOME.fullmatch(c.line())
        assert c.line() == CHAT_COMMANDS


def probe(c, service, crlf=False):
    """One request with a known answer; checks the answer."""
    end = "\r\n" if crlf else "\n"
    if service == "echo":
        c.send("ping" + end)
        assert c.line() == "Echo: ping"
    elif service == "calc":
        c.send("add 7 4" + end)
        assert c.line() == "11"
    elif service == "chat":
        c.send("/rooms" + end)
        assert re.fullmatch(r"\* rooms \(\d+\): .*lobby \(\d+\).*", c.line())
    elif service == "stats":
        c.send("stats" + end)
        lines = c.lines_until("END")
        assert lines[0].startswith("STAT pid ")
        assert all(l.startswith("STAT ") for l in lines[:-1])


def all_services(d_factory, **settings):
    return d_factory([{"service": s} for s in SERVICES], workers=1, threads=2, **settings)


def raw_reply(c, timeout=5.0):
    """Bytes up to and including the next LF, unparsed."""
    c.sock.settimeout(timeout)
    while b"\n" not in c.buf:
        chunk = c.sock.recv(4096)
        assert chunk, f"EOF; got {c.buf!r}"
        c.buf += chunk
    raw, c.buf = c.buf.split(b"\n", 1)
    return raw + b"\n"


def test_requests_end_in_lf_or_crlf_replies_in_crlf(forkd_factory):
    d = all_services(forkd_factory)
    for s in SERVICES:
        c = d.client(s)
        greet(c, s)
        probe(c, s, crlf=False)
        probe(c, s, crlf=True)
    # the CR of a CRLF request is not part of the request
    c = d.client("chat")
    greet(c, "chat")
    c.send("/nick bob\r\n")
    reply = raw_reply(c)
    # the chat client above may be announced leaving first: it was closed
    while re.fullmatch(rb"\* guest\d+ left lobby\r\n", reply):
        reply = raw_reply(c)
    assert reply == b"* you are now bob\r\n"
    c = d.client("calc")
    c.send("square 3\r\n")
    assert raw_reply(c) == b"9\r\n"
    c = d.client("echo")
    c.send("one\r\ntwo\n")
    assert raw_reply(c) == b"Echo: one\r\n"
    assert raw_reply(c) == b"Echo: two\r\n"


@pytest.mark.parametrize("service", SERVICES)
def test_quit_and_exit_say_bye_and_close(forkd_factory, service):
    d = forkd_factory([{"service": service}], workers=1, threads=2)
    words = ["quit", "exit", "QUIT", "Exit", "quit\r"]
    if service == "chat":
        words += ["/quit", "/QUIT"]
    for word in words:
        c = d.client(service)
        greet(c, service)
        probe(c, service)
        # anything after the quit is not answered
        c.send(word + "\nadd 1 1\nstats\n/who\nping\n")
        assert c.line() == "Bye", word
        assert c.eof(), word
        assert c.buf == b"", f"{word}: bytes after Bye: {c.buf!r}"


@pytest.mark.parametrize("service", SERVICES)
def test_banner_comes_first(forkd_factory, service):
    banner = f"Welcome to forkd {service} - be nice"
    d = forkd_factory([{"service": service, "banner": banner}], workers=1, threads=2)
    c = d.client(service)
    # the banner arrives without the client saying anything
    assert c.line() == banner
    greet(c, service)
    probe(c, service)
    # only once
    probe(c, service)


def test_no_banner_unless_configured(forkd_factory):
    d = forkd_factory([{"service": "calc"}, {"service": "echo", "banner": "hi"}],
                      workers=1, threads=2)
    c = d.client("calc")
    assert not c.eof(timeout=0.3) and c.buf == b""
    assert c.ask("add 1 1") == "2"
    assert d.client("echo").line() == "hi"


def wait_cut(c, t0, limit):
    """Wait for 'ERR idle timeout' then EOF; returns seconds since t0."""
    line = c.line(timeout=limit + 3)
    elapsed = time.monotonic() - t0
    assert line == "ERR idle timeout"
    assert c.eof()
    return elapsed


def idle_session(d, service):
    c = d.client(service)
    t0 = time.monotonic()
    greet(c, service)
    # silent for half the timeout: still there, and still answering
    assert not c.eof(timeout=1.0) and c.buf == b""
    probe(c, service)
    # a complete line starts the clock again: the cut comes ~2 s after it
    t1 = time.monotonic()
    elapsed = wait_cut(c, t1, 2)
    assert 1.7 <= elapsed <= 3.0, f"cut after {elapsed:.2f}s of silence, idle_timeout=2"
    assert time.monotonic() - t0 >= 2.7


def trickling_session(d, service):
    """Bytes that never finish a line do not keep a session alive."""
    c = d.client(service)
    t0 = time.monotonic()
    greet(c, service)
    # a line sent a byte at a time over a second still counts once finished
    word = {"echo": "ping", "calc": "add 7 4", "chat": "/rooms", "stats": "stats"}[service]
    for ch in word:
        c.send(ch)
        assert not c.eof(timeout=1.0 / len(word)) and c.buf == b""
    c.send("\n")
    # (probe's reply check, on the line that was trickled)
    if service == "echo":
        assert c.line() == "Echo: ping"
    elif service == "calc":
        assert c.line() == "11"
    elif service == "chat":
        assert c.line().startswith("* rooms (")
    else:
        assert c.lines_until("END")[0].startswith("STAT pid ")
    t1 = time.monotonic()
    # now trickle forever: one byte every 50 ms, never a newline
    got = b""
    cut_at = None
    while time.monotonic() - t1 < 6:
        try:
            c.send(b"a")
        except OSError:
            cut_at = time.monotonic()
            break
        c.sock.settimeout(0.05)
        try:
            chunk = c.sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            cut_at = time.monotonic()
            break
        got += chunk
        if not chunk or got.endswith(b"\n"):
            cut_at = time.monotonic()
            break
    assert cut_at is not None, "a trickling client was never cut"
    elapsed = cut_at - t1
    assert got.startswith(b"ERR idle timeout\r\n"), got
    assert 1.7 <= elapsed <= 3.0, f"cut after {elapsed:.2f}s, idle_timeout=2"
    assert t1 - t0 >= 0.9


def each_service_at_once(fn, d):
    """fn(d, service) for every service, concurrently: the waits overlap."""
    failures = {}

    def run(s):
        try:
            fn(d, s)
        except BaseException as e:  # reported below, per service
            failures[s] = e
    ts = [threading.Thread(target=run, args=(s,)) for s in SERVICES]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for s, e in failures.items():
        raise AssertionError(f"{s}: {e!r}") from e


def test_idle_client_is_cut_at_idle_timeout(forkd_factory):
    d = all_services(forkd_factory, idle_timeout=2)
    each_service_at_once(idle_session, d)


def test_trickling_one_line_is_cut_at_idle_timeout(forkd_factory):
    d = all_services(forkd_factory, idle_timeout=2)
    each_service_at_once(trickling_session, d)


def test_listener_idle_timeout_overrides_the_global_one(forkd_factory):
    d = forkd_factory([{"service": "calc", "idle_timeout": 1},
                       {"service": "stats"},
                       {"service": "echo", "idle_timeout": 4}],
                      workers=1, threads=2, idle_timeout=2)
    t0 = time.monotonic()
    short = d.client("calc")
    glob = d.client("stats")
    long_ = d.client("echo")
    e_short = wait_cut(short, t0, 1)
    assert 0.7 <= e_short <= 1.8, f"calc (idle_timeout=1) cut after {e_short:.2f}s"
    e_glob = wait_cut(glob, t0, 2)
    assert 1.7 <= e_glob <= 3.0, f"stats (global idle_timeout=2) cut after {e_glob:.2f}s"
    # the echo listener's own 4 s still holds after the global 2 s
    remaining = 3.3 - (time.monotonic() - t0)
    assert not long_.eof(timeout=max(remaining, 0)) and long_.buf == b"", \
        "echo (idle_timeout=4) was cut before 3.3 s"
    assert long_.ask("still") == "Echo: still"


@pytest.mark.parametrize("service", SERVICES)
def test_line_too_long_on_every_service(forkd_factory, service):
    d = forkd_factory([{"service": service}], workers=1, threads=2, max_line=64)
    c = d.client(service)
    greet(c, service)
    err = "ERR line too long (max 64 bytes)"
    c.send("q" * 65 + "\n")
    assert c.line() == err
    probe(c, service)
    # with a CRLF, 65 bytes are still too many
    c.send("q" * 65 + "\r\n")
    assert c.line() == err
    probe(c, service)
    # exactly 64 bytes is a request like any other
    if service == "calc":
        assert c.ask("add 1 2".ljust(64)) == "3"
    elif service == "echo":
        assert c.ask("e" * 64) == "Echo: " + "e" * 64
    elif service == "stats":
        c.send("stats".ljust(64) + "\r\n")
        assert c.lines_until("END")[0].startswith("STAT pid ")
    # a long line in many pieces: one error, then the session goes on
    for _ in range(20):
        c.send("z" * 1000)
    c.send("\n")
    assert c.line() == err
    probe(c, service)
    # "quit" still works afterwards
    c.send("quit\n")
    assert c.line() == "Bye"
    assert c.eof()
