"""The benchmark tools behind docs/BENCHMARKS.md: the figures there are only
worth something while anyone can run the same script again."""
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import (FORKD, alive, children, conf_text, free_port, socket_inodes,
                      wait_until)

SRC = os.environ.get("FORKD_SRCDIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def echo_floor(tmp_path_factory):
    """echo-floor built once, with the flags compare builds it with, as errors."""
    exe = tmp_path_factory.mktemp("floor") / "echo-floor"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                    os.path.join(SRC, "tests", "bench", "echo-floor.c"), "-o", str(exe)],
                   check=True)
    return exe


def test_floor_in_processes_spreads_connections_and_stops_as_one(echo_floor):
    exe = echo_floor
    port = free_port()
    p = subprocess.Popen([str(exe), "-p", str(port), "-x", "Echo: ", "-n", "3"],
                         stderr=subprocess.DEVNULL)
    try:
        kids = wait_until(lambda: len(children(p.pid)) == 2 and children(p.pid),
                          what="the two other processes")
        held = []
        for i in range(30):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"hello %d\r\n" % i)
            held.append(s)
        for i, s in enumerate(held):
            got = b""
            while not got.endswith(b"\r\n"):
                chunk = s.recv(4096)
                assert chunk, f"connection {i} closed before its reply"
                got += chunk
            assert got == b"Echo: hello %d\r\n" % i
        # each process has its listening socket; the rest are connections
        serving = [pid for pid in [p.pid] + kids if len(socket_inodes(pid)) > 1]
        assert len(serving) >= 2, "every connection went to one process"
        for s in held:
            s.close()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 0
        wait_until(lambda: not any(alive(k) for k in kids), what="the others to stop")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_floor_rejects_a_bad_process_count(echo_floor):
    r = subprocess.run([str(echo_floor), "-p", str(free_port()), "-n", "0"],
                       capture_output=True, text=True, timeout=5)
    assert r.returncode == 2 and "usage" in r.stderr


def test_compare_runs_and_prints_its_table(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([os.path.join(SRC, "tests", "bench", "compare"),
                        "--servers", "forkd,floor,floorn", "--rounds", "1",
                        "--duration", "1", "--warmup", "0", "--sessions", "200",
                        "--hold-time", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, FORKD=FORKD))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (out / "table.md").read_text()
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            rows[cells[0]] = cells[1:]
    assert rows["metric"][:4] == ["forkd", "Apache", "floor", "floor x2"]
    rate = rows["rr rate, req/s (50 conns, 16 B)"]
    assert rate[1] == "-"                       # Apache was left out
    assert all(float(v) > 0 for v in rate[0:1] + rate[2:4] + rate[5:7]), rate
    assert rows["rr errors (all rounds)"][0] == "0"
    for col in (0, 2, 3):                       # forkd and both floors
        assert rows["hold: answered at start (worst round)"][col] == "200"
        assert rows["hold: answered after hold (worst round)"][col] == "200"
    assert "every session told before EOF: yes" in table
    # every process it started is gone
    for line in r.stdout.splitlines():
        if line.startswith("compare: ") and " started, pid " in line:
            pid = int(line.split(" started, pid ")[1].split(",")[0])
            assert not alive(pid), line


# ---- forkd-bench: chat fan-out and WebSocket ---------------------------------

BENCH = os.environ.get("FORKD_BENCH_BIN",
                       os.path.join(os.path.dirname(FORKD), "forkd-bench"))


def summary(out):
    line = [l for l in out.splitlines() if l.startswith("SUMMARY ")]
    assert line, "no SUMMARY line in:\n" + out[-3000:]
    return dict(kv.split("=", 1) for kv in line[-1].split()[1:])


def bench(*args, timeout=120):
    if not os.access(BENCH, os.X_OK):
        pytest.skip(f"forkd-bench is not built at {BENCH} (make builds it)")
    r = subprocess.run([BENCH, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    return r, summary(r.stdout)


def test_fanout_delivers_every_message_of_a_real_chat_room(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=4,
                      chat={"max_members": 200})
    r, s = bench("fanout", "--port", d.port, "-c", 30, "-r", 40, "-d", 1,
                 "--drain", 5, "-t", 2, "--room", "benchroom")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert s["receivers"] == "29" and s["failed"] == "0"
    assert s["sent"] == "40" and s["expected"] == str(29 * 40)
    assert s["received"] == s["expected"] and s["lost"] == "0"
    assert s["dup"] == "0" and s["errors"] == "0"


def test_fanout_counts_what_a_room_never_delivers(forkd_factory):
    """Members split over two separate forkd (no shared layer) miss what the
    sender's forkd does not pass on: the count must say so."""
    a = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    b = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    r, s = bench("fanout", "--port", f"{a.port},{b.port}", "-c", 10, "-r", 20, "-d", 0.5,
                 "--drain", 0.5, "--sync-wait", 0.5)
    assert r.returncode == 1
    # the sender and members 2, 4, .. are on a; 1, 3, .. on b
    assert int(s["lost"]) == int(s["sent"]) * 5, s
    assert int(s["received"]) == int(s["sent"]) * 4, s


def ws_echo_server(port, prefix):
    """A real WebSocket echo (python3-websockets) in a child process."""
    pytest.importorskip("websockets", reason="python3-websockets is not installed")
    code = f"""
import asyncio, websockets
async def echo(ws, *path):
    async for m in ws:
        await ws.send({prefix!r} + m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", {port}):
        await asyncio.Future()
asyncio.run(main())
"""
    p = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    wait_until(lambda: p.poll() is not None or port_open(port), timeout=10,
               what="the WebSocket echo to listen")
    assert p.poll() is None, p.stderr.read().decode()
    return p


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_ws_rr_and_hold_against_a_websocket_echo():
    port = free_port()
    p = ws_echo_server(port, "Echo: ")
    try:
        r, s = bench("rr", "--ws", "/", "--port", port, "-c", 4, "-d", 0.5, "-w", 0)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert int(s["requests"]) > 0 and s["errors"] == "0" and s["ws"] == "/"
        r, s = bench("hold", "--ws", "/", "--port", port, "-k", 20, "--hold-time", 0.2)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert s["ok_start"] == "20" and s["ok_end"] == "20"
        # a prefix the server does not send: every reply is refused
        r, s = bench("rr", "--ws", "/", "--port", port, "-x", "Other: ", "-c", 1,
                     "-d", 0.3, "-w", 0)
        assert r.returncode == 1 and s["requests"] == "0"
        assert int(s["err_badreply"]) > 0
    finally:
        p.kill()
        p.wait()


def test_ws_handshake_with_a_wrong_accept_is_an_error():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.settimeout(2)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                c.recv(4096)
            except OSError:
                pass
            finally:
                c.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        r, s = bench("rr", "--ws", "/", "--port", port, "-c", 1, "-d", 0.3, "-w", 0,
                     "--timeout", 1)
        assert r.returncode == 1
        assert s["requests"] == "0" and int(s["err_handshake"]) > 0, s
    finally:
        stop.set()
        t.join()
        srv.close()


@pytest.mark.parametrize("form", ["json", "text"])
def test_fanout_over_websocket_reads_the_room_forms(form):
    """A room that sends {"payload": {"message": ..}} to every member, the
    sender included, as the Channels tutorial's room does; or text lines
    "[nick] text" as a line chat does."""
    pytest.importorskip("websockets", reason="python3-websockets is not installed")
    port = free_port()
    code = f"""
import asyncio, json, websockets
members = set()
async def room(ws, *path):
    members.add(ws)
    try:
        async for m in ws:
            text = json.loads(m)["message"]
            out = json.dumps({{"payload": {{"message": text, "nick": "n", "room": "r"}}}})
            if {form!r} == "text":
                out = "[n] " + text + "\\r\\n"
            for x in list(members):
                try:
                    await x.send(out)
                except websockets.ConnectionClosed:
                    pass
    finally:
        members.discard(ws)
async def main():
    async with websockets.serve(room, "127.0.0.1", {port}):
        await asyncio.Future()
asyncio.run(main())
"""
    p = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: p.poll() is not None or port_open(port), timeout=10,
                   what="the WebSocket room to listen")
        assert p.poll() is None, p.stderr.read().decode()
        r, s = bench("fanout", "--ws", "/websock1/", "--port", port, "-c", 8, "-r", 20,
                     "-d", 0.5, "--drain", 5)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert s["sent"] == "10" and s["expected"] == "70" and s["received"] == "70"
        assert s["lost"] == "0" and s["dup"] == "0"
    finally:
        p.kill()
        p.wait()


def forkd_speaks_websocket(tmp_path):
    conf = tmp_path / "ws-check.conf"
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": free_port(),
                                "service": "echo", "protocol": "websocket"}]))
    r = subprocess.run([FORKD, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def test_ws_rr_against_forkd_websocket_echo(forkd_factory, tmp_path):
    ok, why = forkd_speaks_websocket(tmp_path)
    if not ok:
        pytest.skip(f"SKIPPED LOUDLY: this forkd has no websocket listener yet ({why})")
    d = forkd_factory([{"service": "echo", "protocol": "websocket"}], workers=2, threads=4)
    r, s = bench("rr", "--ws", "/", "--port", d.port, "-c", 8, "-d", 0.5, "-w", 0)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert int(s["requests"]) > 0 and s["errors"] == "0"


def table_rows(text):
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


def test_fanout_script_runs_and_prints_its_table(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([os.path.join(SRC, "tests", "bench", "fanout"),
                        "--servers", "forkd-line", "--members", "20", "--rate", "20",
                        "--duration", "1", "--drain", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, FORKD=FORKD))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = table_rows((out / "table.md").read_text())
    assert rows["metric"] == ["forkd-line"]
    assert rows["receiving members in the room"] == ["19"]
    assert rows["deliveries expected"] == ["380"]
    assert rows["deliveries received"] == ["380"] and rows["lost"] == ["0"]
    for line in r.stdout.splitlines():
        if " started, pid(s) " in line:
            for pid in line.split(" started, pid(s) ")[1].split(",")[0].split():
                assert not alive(int(pid)), line


def test_compare_ws_runs_or_says_what_it_left_out(tmp_path, forkd_factory):
    out = tmp_path / "out"
    r = subprocess.run([os.path.join(SRC, "tests", "bench", "compare-ws"),
                        "--servers", "forkd-ws,forkd-line", "--duration", "1",
                        "--warmup", "0", "--sessions", "200", "--hold-time", "1",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, FORKD=FORKD))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = table_rows((out / "table.md").read_text())
    assert rows["metric"][:2] == ["forkd ws", "forkd line"]
    assert float(rows["rr rate, req/s (50 conns, 16 B)"][1]) > 0
    assert rows["hold: answered after hold"][1] == "200"
    ok, _ = forkd_speaks_websocket(tmp_path)
    if ok:
        assert float(rows["rr rate, req/s (50 conns, 16 B)"][0]) > 0
        assert rows["hold: answered after hold"][0] == "200"
    else:
        assert rows["rr rate, req/s (50 conns, 16 B)"][0] == "-"
        assert "forkd-ws LEFT OUT" in r.stderr
