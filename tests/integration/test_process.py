"""Processes, threads, readiness and stopping."""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import Client, alive, children, owner, wait_until


def threads_of(pid, name=None):
    tasks = os.listdir(f"/proc/{pid}/task")
    if name is None:
        return len(tasks)
    n = 0
    for t in tasks:
        with open(f"/proc/{pid}/task/{t}/comm") as f:
            n += f.read().strip() == name
    return n


def test_ready_then_status(forkd_factory):
    d = forkd_factory(workers=3, threads=2)
    i = d.notify.wait_for("READY=1")
    j = d.notify.wait_for("STATUS=", start=i)
    assert j > i
    assert "3 workers" in d.notify.messages[j]
    # STATUS stays current: it counts clients and what was served
    c = d.client()
    c.ask("x")
    d.notify.wait_for("1 clients, 1 served", start=j)


def nthreads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def stats(d):
    """The stats listener's STAT lines as a dict."""
    c = d.client("stats")
    c.send("stats\n")
    out = {}
    for l in c.lines_until("END")[:-1]:
        _, name, value = l.split(" ", 2)
        out[name] = value
    c.close()
    return out


def test_ready_only_when_every_worker_is_up(forkd_factory):
    """READY=1 comes once every worker has set itself up (its whole pool of
    threads started) and reported ready, not as soon as it is forked."""
    threads = 1024      # a worker's setup takes a while: easy to see unfinished
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], start=False,
                      workers=8, threads=threads)
    d.start(wait=False)
    # READY=1 read the moment it arrives, not at the next poll interval
    deadline = time.monotonic() + 10
    while not any("READY=1" in m for m in d.notify.messages):
        assert time.monotonic() < deadline, "no READY=1"
        select.select([d.notify.sock], [], [], 0.5)
        d.notify.poll()
    # what the workers look like at that moment, before they can catch up:
    # the scoreboard, and how many threads each one has
    st = stats(d)
    at_ready = {w: nthreads(w) for w in d.workers()}
    assert st["workers_ready"] == "8", st
    assert [st[f"worker.{i}.state"] for i in range(8)] == ["ready"] * 8, st
    assert len(at_ready) == 8
    # a pool, an acceptor and the main thread at least, in every one
    assert all(n >= threads + 2 for n in at_ready.values()), at_ready
    for w in at_ready:
        assert threads_of(w, "forkd-pool") == threads


def test_workers_and_threads_as_configured(forkd_factory):
    d = forkd_factory(workers=3, threads=5)
    ws = d.workers()
    assert len(ws) == 3
    for w in ws:
        # a pool of exactly `threads`, named so `top -H` shows them
        assert threads_of(w, "forkd-pool") == 5
    assert threads_of(d.pid, "forkd-pool") == 0  # the master only supervises


def test_many_clients_spread_over_workers(forkd_factory):
    d = forkd_factory(workers=3, threads=4)
    clients = [d.client() for _ in range(60)]
    for i, c in enumerate(clients):
        c.send(f"client {i}\n")
    for i, c in enumerate(clients):
        assert c.line() == f"Echo: client {i}"
    # every worker holds some of them: read it from the stats of each worker
    per_worker = {}
    for w in d.workers():
        fds = [os.readlink(f"/proc/{w}/fd/{fd}") for fd in os.listdir(f"/proc/{w}/fd")]
        per_worker[w] = sum(1 for f in fds if f.startswith("socket:"))
    busy = [w for w, n in per_worker.items() if n > 3]
    assert len(busy) >= 2, per_worker


def test_concurrent_clients_all_answered(forkd_factory):
    d = forkd_factory(workers=2, threads=2)
    errors = []

    def run(i):
        try:
            c = d.client()
            for k in range(20):
                assert c.ask(f"{i}-{k}") == f"Echo: {i}-{k}"
            c.close()
        except Exception as e:  # collected for the assertion below
            errors.append(repr(e))
    ts = [threading.Thread(target=run, args=(i,)) for i in range(60)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def stop_with_clients(d, sig):
    clients = [d.client() for _ in range(10)]
    for c in clients:
        assert c.ask("before") == "Echo: before"
    workers = d.workers()
    start = d.notify.wait_for("READY=1")
    t0 = time.monotonic()
    d.signal(sig)
    for c in clients:
        assert c.line() == "ERR server shutting down"
        assert c.eof()
    assert d.wait(timeout=15) == 0
    elapsed = time.monotonic() - t0
    stopping = d.notify.wait_for("STOPPING=1", start=start)
    # systemctl status shows what the stop is doing
    d.notify.wait_for("STATUS=stopping", start=stopping)
    # the master reaped every worker before it exited: none is left, not
    # even as an orphan still on its way out
    assert len(workers) == 2
    for w in workers:
        assert not alive(w), f"worker {w} left behind"
    return elapsed


def test_sigterm_with_clients_open(forkd_factory):
    d = forkd_factory(workers=2, threads=2, shutdown_timeout=3)
    assert stop_with_clients(d, signal.SIGTERM) < 3 + 1
    assert "stopped:" in d.log()


def test_sigint_with_clients_open(forkd_factory):
    d = forkd_factory(workers=2, threads=2, shutdown_timeout=3)
    assert stop_with_clients(d, signal.SIGINT) < 3 + 1


def test_stop_with_a_client_that_never_reads(forkd_factory):
    """Even a client whose receive buffer is full cannot hold the stop past
    shutdown_timeout + 1 s."""
    d = forkd_factory(workers=1, threads=2, shutdown_timeout=2)
    stuck = d.client()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.sock.settimeout(2)
        for _ in range(2000):
            stuck.sock.send(b"x" * 1000 + b"\n")
    except (socket.timeout, BlockingIOError):
        pass
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 2 + 1


def test_master_killed_workers_exit_and_free_the_port(forkd_factory):
    d = forkd_factory(workers=2, threads=2)
    c = d.client()
    assert c.ask("hi") == "Echo: hi"
    workers = d.workers()
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait()
    for w in workers:
        wait_until(lambda: not alive(w), 5, f"worker {w} to exit")

    def bindable():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", d.port))
            s.listen()
            return True
        except OSError:
            return False
        finally:
            s.close()
    wait_until(bindable, 5, "the port to be free")


def test_no_notify_socket_is_fine(forkd_factory):
    d = forkd_factory(start=False, workers=1)
    d.env.pop("NOTIFY_SOCKET")
    d.start(wait=False)
    wait_until(lambda: "ready:" in d.log(), 5, "ready in the log")
    assert d.client().ask("x") == "Echo: x"


def test_log_says_what_it_listens_on(forkd):
    log = forkd.log()
    assert f"listening on 127.0.0.1:{forkd.port} (echo)" in log
    assert "starting 2 workers" in log


def test_journal_priority_prefix(forkd_factory, tmp_path):
    d = forkd_factory(start=False, workers=1)
    st = os.stat(d.log_path) if os.path.exists(d.log_path) else None
    # JOURNAL_STREAM must name the very stream stderr is: make the log file it
    open(d.log_path, "ab").close()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    wait_until(lambda: "<6>master[" in d.log(), 5, "journal-style lines")
    assert "<6>master[" in d.log()
