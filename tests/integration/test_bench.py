"""The benchmark tools behind docs/BENCHMARKS.md: the figures there are only
worth something while anyone can run the same script again."""
import os
import signal
import socket
import subprocess

import pytest

from conftest import FORKD, alive, children, free_port, socket_inodes, wait_until

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
