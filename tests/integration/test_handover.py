"""Sessions survive reloads: every open connection, with its state, moves to
the new generation of workers (reload_sessions = "handover", the default).
The clients here never pause and never reconnect; what they must see is
nothing at all: no EOF, no reset, no goodbye, no chat left/joined line, every
request answered once and in order."""
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import Client, alive, wait_until

try:
    import websocket as wsclient
except ImportError:  # pragma: no cover - the tests say so loudly
    wsclient = None

ECHO, CHUNK, CHAT, CHAT_CHUNK, STATS, WS_ECHO, WS_CHAT = range(7)


def need_ws():
    if wsclient is None:
        pytest.skip("python3-websocket is not installed: the WebSocket sessions "
                    "need a real client")


def handover_daemon(forkd_factory, tmp_path, **settings):
    settings.setdefault("workers", 2)
    settings.setdefault("threads", 4)
    settings.setdefault("shutdown_timeout", 20)
    settings.setdefault("send_timeout", 120)
    listeners = [{"service": "echo"}, {"service": "echo", "protocol": "chunk"},
                 {"service": "chat"}, {"service": "chat", "protocol": "chunk"},
                 {"service": "stats"}, {"service": "echo", "protocol": "websocket"},
                 {"service": "chat", "protocol": "websocket"}]
    # seven different free ports: held open together while they are picked
    held = []
    for l in listeners:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
        l["port"] = s.getsockname()[1]
    for s in held:
        s.close()
    return forkd_factory(listeners, control_socket=str(tmp_path / "ctl.sock"), **settings)


def port(d, i):
    return d.listeners[i]["port"]


def stats(d):
    c = Client(port(d, STATS))
    c.send("stats\n")
    out = {}
    for l in c.lines_until("END")[:-1]:
        _, k, v = l.split(" ", 2)
        out[k] = v
    c.close()
    return out


def reload_done(d, n):
    """The n-th reload's old workers are gone (the master's summary line)."""
    d.notify.poll()     # systemd reads every message; so must we
    return d.log().count("reload took ") >= n


def fd_counts(d):
    out = {}
    for p in [d.pid] + d.workers():
        try:
            out[p] = len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return out


def tcp_by_worker(d):
    """Established TCP sockets each worker holds."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            col = row.split()
            if col[3] == "01":
                inodes.add(col[9])
    out = {}
    for w in d.workers():
        out[w] = 0
        try:
            for fd in os.listdir(f"/proc/{w}/fd"):
                link = os.readlink(f"/proc/{w}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    out[w] += 1
        except OSError:
            pass
    return out


def tcp_fds(d):
    return sum(tcp_by_worker(d).values())


class Load:
    """Clients that send numbered requests without pause and check every answer."""

    def __init__(self, d):
        self.d = d
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.counts = {}
        self.threads = []
        self.missed_chat = 0

    def error(self, what):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(what)
        self.stop.set()

    def count(self, name, n=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def run(self, fn, *args):
        def wrap():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - any failure is the test's
                self.error(f"{fn.__name__}: {e!r}")
        t = threading.Thread(target=wrap, daemon=True)
        self.threads.append(t)
        t.start()

    def echo_pipelined(self, name, window=4):
        """Line protocol, up to `window` requests outstanding."""
        c = Client(port(self.d, ECHO), timeout=10)
        sent = got = 0
        while not self.stop.is_set():
            while sent - got < window:
                c.send(f"{name} {sent}\n")
                sent += 1
            l = c.line(timeout=10)
            if l != f"Echo: {name} {got}":
                raise AssertionError(f"{name}: wanted answer {got}, got {l!r}")
            got += 1
            self.count("echo")
        while got < sent:
            l = c.line(timeout=10)
            if l != f"Echo: {name} {got}":
                raise AssertionError(f"{name}: wanted answer {got}, got {l!r}")
            got += 1
        c.close()

    def echo_ws(self, name):
        """WebSocket: one text message a request, one a reply."""
        ws = wsclient.create_connection(f"ws://127.0.0.1:{port(self.d, WS_ECHO)}/",
                                        timeout=10)
        n = 0
        while not self.stop.is_set():
            ws.send(f"{name} {n}")
            got = ws.recv()
            if got != f"Echo: {name} {n}":
                raise AssertionError(f"{name}: wanted answer {n}, got {got!r}")
            n += 1
            self.count("websocket")
        ws.close()

    def echo_chunk(self, name):
        c = Client(port(self.d, CHUNK), timeout=10)
        n = 0
        while not self.stop.is_set():
            l = c.ask(f"{name} {n}", timeout=10)
            if l != f"Echo: {name} {n}":
                raise AssertionError(f"{name}: wanted answer {n}, got {l!r}")
            n += 1
            self.count("chunk")
        c.close()


def join_chat(p, nick, room):
    c = Client(p, timeout=10)
    c.lines_until("* commands: /nick NAME, /join ROOM, /who, /rooms, /quit")
    assert c.ask(f"/nick {nick}") == f"* you are now {nick}"
    c.send(f"/join {room}\n")
    while True:
        l = c.line()
        if l == f"* you joined {room}":
            return c


def test_hundred_reloads_under_load(forkd_factory, tmp_path, capsys):
    need_ws()
    limit = 10
    d = handover_daemon(forkd_factory, tmp_path, max_connections_per_ip=limit)
    fds0 = fd_counts(d)
    load = Load(d)
    # chat: two members per protocol, each room hears its sender in order
    talk = join_chat(port(d, CHAT), "talker", "r1")
    hear = join_chat(port(d, CHAT_CHUNK), "hearer", "r1")
    assert talk.line() == "* hearer joined r1"
    # a browser's member: it reads JSON
    wsh = wsclient.create_connection(f"ws://127.0.0.1:{port(d, WS_CHAT)}/", timeout=10)
    assert json.loads(wsh.recv())["event"] == "welcome"
    wsh.send(json.dumps({"command": "nick", "arg": "wshearer"}))
    while json.loads(wsh.recv()).get("text") != "you are now wshearer":
        pass
    wsh.send(json.dumps({"command": "join", "arg": "r1"}))
    while json.loads(wsh.recv()).get("text") != "you joined r1":
        pass
    assert talk.line() == "* wshearer joined r1"
    assert hear.line() == "* wshearer joined r1"
    # a slow reader: output is queued in the server at the moment of handover
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port(d, ECHO)))
    slow_sent = 0
    for name in ("p1", "p2"):
        load.run(load.echo_pipelined, name)
    load.run(load.echo_chunk, "k1")
    load.run(load.echo_ws, "w1")
    heard = []
    ws_heard = []

    def ws_listen():
        wsh.settimeout(0.5)
        while not load.stop.is_set():
            try:
                ws_heard.append(wsh.recv())
            except wsclient.WebSocketTimeoutException:
                continue
    load.run(ws_listen)

    def listen():
        while not load.stop.is_set():
            try:
                l = hear.line(timeout=0.5)
            except socket.timeout:
                continue
            if l is None:
                raise AssertionError("chat member got EOF")
            heard.append(l)
    load.run(listen)
    said = [0]

    def chatter():
        while not load.stop.is_set():
            talk.send(f"m {said[0]}\n")
            said[0] += 1
            time.sleep(0.002)
    load.run(chatter)
    # 9 connections from 127.0.0.1 with `part` below; the limit is 10

    reloads = 100
    split = reloads // 2
    part = Client(port(d, ECHO), timeout=10)
    t_start = time.monotonic()
    for i in range(1, reloads + 1):
        if load.stop.is_set():
            break
        if i == split:
            part.send("spl")           # the rest comes after the reload
        # the slow reader's queue: replies it does not read yet
        if i % 10 == 1:
            blob = "".join(f"s{slow_sent + k} {'x' * 400}\n" for k in range(40))
            slow.sendall(blob.encode())
            slow_sent += 40
        d.signal(signal.SIGHUP)
        wait_until(lambda: reload_done(d, i), 10, f"reload {i} to finish")
        if i == split:
            part.send("it\n")
            assert part.line() == "Echo: split"
    elapsed = time.monotonic() - t_start
    load.stop.set()
    for t in load.threads:
        t.join(timeout=15)
    assert not load.errors, load.errors

    # the slow reader gets everything, in order
    slow.settimeout(10)
    buf = b""
    want = [f"Echo: s{k} {'x' * 400}" for k in range(slow_sent)]
    while buf.count(b"\r\n") < len(want):
        chunk = slow.recv(65536)
        assert chunk, "the slow reader got EOF"
        buf += chunk
    assert buf.decode().split("\r\n")[:-1] == want

    # chat: every line said reached the other member once, in order; the
    # room and the nicks stayed, nobody left or joined
    while len(heard) < said[0]:
        l = hear.line(timeout=5)
        assert l is not None, "chat member got EOF"
        heard.append(l)
    wsh.settimeout(5)
    while len(ws_heard) < said[0]:
        ws_heard.append(wsh.recv())
    ws_got = [json.loads(m) for m in ws_heard]
    assert ws_got == [{"payload": {"message": f"m {k}", "nick": "talker", "room": "r1"}}
                      for k in range(said[0])], \
        "the WebSocket member lost, repeated or reordered chat lines"
    lines = [l for l in heard if not l.startswith("[talker] m ")]
    assert lines == [], lines
    got = [int(l.rsplit(" ", 1)[1]) for l in heard]
    assert got == list(range(said[0])), "chat lines lost, repeated or out of order"
    talk.send("/who\n")
    who = re.compile(r"\* r1 \(3\): (hearer|talker|wshearer), (hearer|talker|wshearer), "
                     r"(hearer|talker|wshearer)")
    assert who.fullmatch(talk.line())
    hear.send("/who\n")
    who = hear.line(timeout=5)
    while who.startswith("[talker]"):
        who = hear.line(timeout=5)
    assert re.compile(r"\* r1 \(3\): .*").fullmatch(who), who

    s = stats(d)
    assert int(s["sessions_handed_over"]) >= reloads * 4
    assert s["handovers_failed"] == "0"
    # talk, hear, wsh, slow, part and the stats connection itself
    assert int(s["curr_connections"]) == 6, s["curr_connections"]

    # per-address counts moved, not doubled or lost: 5 open, 5 more fit, not 6
    wait_until(lambda: tcp_fds(d) == 5, 5, "the closed connections to be gone")
    extra = [Client(port(d, ECHO)) for _ in range(limit - 5)]
    for c in extra:
        assert c.ask("more") == "Echo: more"
    over = Client(port(d, ECHO))
    assert over.line() == "ERR too many connections"
    over.close()

    # no descriptor left behind: the master as before, the workers only
    # hold the clients' sockets
    wait_until(lambda: tcp_fds(d) == limit, 5, f"workers holding exactly {limit} sessions")
    fds1 = fd_counts(d)
    assert fds1[d.pid] == fds0[d.pid], (fds0, fds1)
    with capsys.disabled():
        print(f"\n[handover] {reloads} reloads in {elapsed:.1f} s under load: "
              f"{load.counts} answered in order, {s['sessions_handed_over']} sessions "
              f"handed over, {said[0]} chat lines heard once each, in order")
    for c in extra + [part, talk, hear]:
        c.close()
    slow.close()
    wsh.close()


def test_new_generation_killed_mid_handover(forkd_factory, tmp_path):
    d = handover_daemon(forkd_factory, tmp_path, log_level="debug")
    clients = [Client(port(d, ECHO)) for _ in range(6)]
    members = [join_chat(port(d, CHAT), f"n{k}", "lobby2") for k in range(2)]
    members[0].line()                   # "* n1 joined lobby2"
    for k, c in enumerate(clients):
        assert c.ask(f"a{k}") == f"Echo: a{k}"
    old = d.workers()
    # the old workers wait while the new generation comes up, which then
    # freezes: the sessions are offered to workers that never answer
    for w in old:
        os.kill(w, signal.SIGSTOP)
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.log().count("ready: 4 threads") >= 4, 10, "the new workers")
    new = [w for w in d.workers() if w not in old]
    assert len(new) == 2
    for w in new:
        os.kill(w, signal.SIGSTOP)
    for w in old:
        os.kill(w, signal.SIGCONT)
    wait_until(lambda: d.log().count("handing over") >= 2, 10, "the offers")
    time.sleep(0.2)     # let offers reach the frozen workers (nothing to await)
    for w in new:
        os.kill(w, signal.SIGKILL)
    # every session is served, by its old worker and then by the replacements
    for k, c in enumerate(clients):
        assert c.ask(f"b{k}") == f"Echo: b{k}"
    members[0].send("still here\n")
    assert members[1].line() == "[n0] still here"
    wait_until(lambda: all(not alive(w) for w in old), 15, "the old workers to hand over")
    for k, c in enumerate(clients):
        assert c.ask(f"c{k}") == f"Echo: c{k}"
    members[1].send("/who\n")
    assert members[1].line() in ("* lobby2 (2): n0, n1", "* lobby2 (2): n1, n0")
    s = stats(d)
    assert int(s["handovers_failed"]) > 0
    # the reload says what happened
    wait_until(lambda: re.search(r"reload took \d+ ms: \d+ sessions handed over", d.log()),
               5, "the reload's summary")
    assert re.search(r"\d+ handovers? failed: those sessions stayed", d.log())
    d.notify.wait_for("handovers failed")          # and STATUS= too
    for c in clients + members:
        c.close()


def test_refused_sessions_stay_and_drain(forkd_factory, tmp_path):
    """A listener the new file drops: its sessions stay with the old worker."""
    d = handover_daemon(forkd_factory, tmp_path, shutdown_timeout=2)
    c = Client(port(d, ECHO))
    chunk = Client(port(d, CHUNK))
    assert c.ask("x") == "Echo: x"
    d.write_conf(listeners=[l for i, l in enumerate(d.listeners) if i != ECHO])
    d.signal(signal.SIGHUP)
    wait_until(lambda: "cannot take this session" in d.log(), 10, "the refusal")
    assert c.ask("still") == "Echo: still"            # served by its old worker
    assert chunk.ask("moved") == "Echo: moved"
    # then it drains like before handover existed
    assert c.line(timeout=5) == "ERR server reloaded: please reconnect"
    assert c.eof()
    assert chunk.ask("on") == "Echo: on"


def test_removed_and_recycled_workers_hand_over(forkd_factory, tmp_path):
    d = handover_daemon(forkd_factory, tmp_path, workers=3)
    clients = [Client(port(d, ECHO)) for _ in range(9)]
    for k, c in enumerate(clients):
        assert c.ask(f"a{k}") == f"Echo: a{k}"
    before = set(d.workers())
    d.signal(signal.SIGTTOU)
    wait_until(lambda: len(d.workers()) == 2, 10, "one worker fewer")
    for k, c in enumerate(clients):
        assert c.ask(f"b{k}") == f"Echo: b{k}"
    # the sessions are spread over those left
    held = tcp_by_worker(d)
    assert sum(held.values()) == 9 and set(held) < before
    assert min(held.values()) >= 4, held
    s = stats(d)
    assert int(s["sessions_handed_over"]) >= 1
    assert s["handovers_failed"] == "0"
    for c in clients:
        c.close()


def test_recycled_worker_hands_over(forkd_factory, tmp_path):
    """max_requests_per_worker: the replaced worker's sessions go to its successor."""
    d = handover_daemon(forkd_factory, tmp_path, workers=1, max_requests_per_worker=6)
    clients = [Client(port(d, ECHO)) for _ in range(4)]
    first = d.workers()
    for k, c in enumerate(clients):
        assert c.ask(f"a{k}") == f"Echo: a{k}"
    for _ in range(4):
        Client(port(d, CHUNK)).close()
    wait_until(lambda: "replaced" in d.log(), 10, "the worker to be replaced")
    wait_until(lambda: not any(alive(w) for w in first), 10, "the first worker gone")
    for k, c in enumerate(clients):
        assert c.ask(f"b{k}") == f"Echo: b{k}"
    assert int(stats(d)["sessions_handed_over"]) == 4
    for c in clients:
        c.close()


def test_drain_when_asked(forkd_factory, tmp_path):
    d = handover_daemon(forkd_factory, tmp_path, shutdown_timeout=1,
                        reload_sessions="drain")
    c = Client(port(d, ECHO))
    assert c.ask("x") == "Echo: x"
    d.signal(signal.SIGHUP)
    assert c.line(timeout=5) == "ERR server reloaded: please reconnect"
    assert c.eof()
    assert stats(d)["sessions_handed_over"] == "0"


def test_upgrade_to_a_rebuilt_binary_under_load(forkd_factory, tmp_path, monkeypatch, capsys):
    """forkd --upgrade: the binary at the path forkd was started from (a
    package upgrade replaced it) becomes the master; every session moves."""
    import shutil
    import subprocess

    import conftest
    need_ws()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    binary = bindir / "forkd"
    shutil.copy(conftest.FORKD, binary)
    monkeypatch.setattr(conftest, "FORKD", str(binary))
    d = handover_daemon(forkd_factory, tmp_path)
    old_master = d.pid
    fds_before = len(os.listdir(f"/proc/{old_master}/fd"))
    load = Load(d)
    talk = join_chat(port(d, CHAT), "talker", "r2")
    hear = join_chat(port(d, CHAT_CHUNK), "hearer", "r2")
    assert talk.line() == "* hearer joined r2"
    load.run(load.echo_pipelined, "u1")
    load.run(load.echo_chunk, "u2")
    load.run(load.echo_ws, "u3")
    part = Client(port(d, ECHO))
    wait_until(lambda: load.counts.get("echo", 0) > 200, 10, "load before the upgrade")
    part.send("spl")
    # the package manager puts a new file in place (a new inode, as dpkg does)
    new = bindir / "forkd.new"
    shutil.copy(conftest.FORKD, new)
    with open(new, "ab") as f:
        f.write(b"\0rebuilt\0")
    os.rename(new, binary)
    t0 = time.monotonic()
    r = subprocess.run([str(binary), "--upgrade", "-c", d.conf], capture_output=True,
                       text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"upgraded: pid (\d+) serves; (\d+) sessions? handed over in \d+ ms\n",
                     r.stdout)
    assert m, r.stdout
    new_master = int(m.group(1))
    try:
        assert new_master != old_master and alive(new_master)
        assert os.readlink(f"/proc/{new_master}/exe") == str(binary)
        assert int(m.group(2)) >= 6
        assert d.proc.wait(timeout=10) == 0
        d.notify.wait_for(f"MAINPID={new_master}")
        part.send("it\n")
        assert part.line() == "Echo: split"
        n = load.counts.get("echo", 0)
        wait_until(lambda: load.counts.get("echo", 0) > n + 200, 10, "load after the upgrade")
        talk.send("after the upgrade\n")
        assert hear.line() == "[talker] after the upgrade"
        hear.send("/who\n")
        assert re.fullmatch(r"\* r2 \(2\): (hearer, talker|talker, hearer)", hear.line())
        load.stop.set()
        for t in load.threads:
            t.join(timeout=15)
        assert not load.errors, load.errors
        # the new master holds what the old one did, nothing more
        wait_until(lambda: len(os.listdir(f"/proc/{new_master}/fd")) == fds_before, 5,
                   f"the new master to hold {fds_before} descriptors")
        # the new master reloads like any: a dropped listener is closed (a
        # connection there is refused, not left hanging)
        gone = port(d, CHUNK)
        d.write_conf(listeners=[l for i, l in enumerate(d.listeners) if i != CHUNK])
        os.kill(new_master, signal.SIGHUP)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", gone), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, 10, f"port {gone} to be closed after the reload")
        assert part.ask("on") == "Echo: on"
        with capsys.disabled():
            print(f"\n[upgrade] forkd --upgrade returned in {took * 1000:.0f} ms: "
                  f"{m.group(2)} sessions moved to pid {new_master}; {load.counts}")
    finally:
        load.stop.set()
        os.kill(new_master, signal.SIGTERM)
        wait_until(lambda: not alive(new_master), 15, "the new master to stop")
        for c in (talk, hear, part):
            c.close()


def test_websocket_moves_between_messages(forkd_factory, tmp_path):
    """A WebSocket session moves at a message boundary: one with half a
    message waits for the rest; one that never sends it drains (1001)."""
    need_ws()
    import struct
    d = handover_daemon(forkd_factory, tmp_path, shutdown_timeout=2, log_level="debug")
    url = f"ws://127.0.0.1:{port(d, WS_ECHO)}/"
    ws = wsclient.create_connection(url, timeout=10)
    stuck = wsclient.create_connection(url, timeout=10)
    for c in (ws, stuck):
        c.send("a")
        assert c.recv() == "Echo: a"
    first = wsclient.ABNF.create_frame("spl", wsclient.ABNF.OPCODE_TEXT, fin=0)
    ws.send_frame(first)
    stuck.send_frame(wsclient.ABNF.create_frame("never", wsclient.ABNF.OPCODE_TEXT, fin=0))
    old = d.workers()
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.log().count("handing over") >= 2, 10, "the handover to begin")
    # half a message: it stays where it is, and the reload waits for it
    assert any(alive(w) for w in old)
    ws.send_frame(wsclient.ABNF.create_frame("it", wsclient.ABNF.OPCODE_CONT, fin=1))
    assert ws.recv() == "Echo: split"
    ws.send("after")
    assert ws.recv() == "Echo: after"
    wait_until(lambda: "adopted (echo, websocket)" in d.log(), 5, "the session to move")
    # the one that never finished its message drains: closed with 1001
    stuck.settimeout(10)
    op, data = stuck.recv_data(control_frame=True)
    assert op == wsclient.ABNF.OPCODE_CLOSE
    assert struct.unpack(">H", data[:2])[0] == 1001
    assert data[2:] == b"server reloaded: please reconnect"
    wait_until(lambda: reload_done(d, 1), 10, "the reload to finish")
    ws.send("later")
    assert ws.recv() == "Echo: later"
    assert stats(d)["sessions_handed_over"] == "1"
    ws.close()


def test_large_state_moves_too(forkd_factory, tmp_path):
    """A session whose state passes what one record holds (here an unfinished
    line of 8100 bytes) moves all the same (its state in a memfd)."""
    d = handover_daemon(forkd_factory, tmp_path, log_level="debug")
    c = Client(port(d, ECHO))
    assert c.ask("x") == "Echo: x"
    big = "y" * 8100
    c.send(big)
    d.signal(signal.SIGHUP)
    wait_until(lambda: reload_done(d, 1), 10, "the reload to finish")
    assert re.search(r"bytes of state, in a memfd", d.log())
    c.send("\n")
    assert c.line() == "Echo: " + big
    assert stats(d)["sessions_handed_over"] == "1"
