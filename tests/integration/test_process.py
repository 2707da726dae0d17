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
    d.notify.wait_for("1 client, 1 served", start=j)


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


def test_worker_at_its_share_stops_accepting(forkd_factory):
    """workers=2, max_connections=4: a worker's share is 2.  Once one worker
    holds 2 clients, the next ones land on the other, even while the
    balance between them would still let it take one more."""
    d = forkd_factory(workers=2, threads=2, max_connections=4)
    held = {w: [] for w in d.workers()}
    assert len(held) == 2
    clients = []
    for i in range(4):
        full = [w for w, cs in held.items() if len(cs) >= 2]
        c = d.client()
        assert c.ask(f"c{i}") == f"Echo: c{i}"
        w = owner(d, c)
        assert w not in full, f"client {i} went to worker {w}, which already holds 2"
        held[w].append(c)
        clients.append(c)
    assert sorted(len(cs) for cs in held.values()) == [2, 2]


def accept_switches(pid):
    """Voluntary context switches of a worker's acceptor thread(s)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                if f.read().strip() != "forkd-accept":
                    continue
            with open(f"/proc/{pid}/task/{t}/status") as f:
                n += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(),
                                   re.M).group(1))
        except OSError:
            pass
    return n


def test_a_connection_wakes_one_acceptor(forkd_factory):
    """No thundering herd: with 6 workers on 2 listeners, each new connection
    wakes one worker's acceptor, not every one waiting on the socket."""
    workers, n = 6, 50
    d = forkd_factory([{"service": "echo"}, {"service": "calc"}], workers=workers,
                      threads=2)
    ws = d.workers()
    assert len(ws) == workers
    before = {w: accept_switches(w) for w in ws}
    for i in range(n):
        # one at a time, each closed before the next: nobody sits out
        if i % 2:
            c = d.client("calc")
            assert c.ask(f"add {i} 1") == str(i + 1)
        else:
            c = d.client("echo")
            assert c.ask(f"n{i}") == f"Echo: n{i}"
        c.close()
    woken = sum(accept_switches(w) - before[w] for w in ws)
    # one wakeup per connection, and some slack for timeouts; a herd is
    # workers × n
    assert woken < 2 * n, f"{woken} acceptor wakeups for {n} connections"


def log_lines(d):
    return [l for l in d.log().splitlines() if l]


def test_log_level_filters(forkd_factory):
    d = forkd_factory(workers=1, log_level="warning")
    assert d.client().ask("x") == "Echo: x"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    # no info line: not what it listens on, not the stop summary
    assert log_lines(d) == [], d.log()
    d2 = forkd_factory(workers=1, log_level="debug")
    wait_until(lambda: " debug " in d2.log(), 5, "a debug line")


def test_log_lines_carry_a_timestamp_and_level(forkd):
    lines = log_lines(forkd)
    assert lines
    for l in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (error|warning|info|debug) +"
                        r"(master|worker \d+)\[\d+\]: \S", l), l
    assert any(f" info    master[{forkd.pid}]: listening on" in l for l in lines), lines


def test_journal_lines_start_with_a_priority(forkd_factory):
    d = forkd_factory(start=False, workers=1)
    # JOURNAL_STREAM must name the very stream stderr is: make the log file it
    open(d.log_path, "ab").close()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    lines = log_lines(d)
    assert any(l.startswith(f"<6>master[{d.pid}]: listening on") for l in lines), lines
    # every line: <N> and no timestamp (the journal has its own)
    for l in lines:
        assert re.match(r"<[0-7]>(master|worker \d+)\[\d+\]: \S", l), l


# asynchronous signals: everything but the faults a thread causes itself
# (SEGV, BUS, FPE, ILL, ABRT, TRAP) and what cannot be blocked (KILL, STOP)
ASYNC_SIGNALS = [s for s in range(1, 32)
                 if s not in (4, 5, 6, 7, 8, 9, 11, 19)] + list(range(34, 65))


def test_every_thread_of_a_worker_blocks_signals(forkd_factory):
    d = forkd_factory(workers=2, threads=3)
    for w in d.workers():
        # forkd's own: the main thread and the named ones (a sanitizer's
        # runtime may add a thread of its own, with its own mask)
        tasks = [t for t in os.listdir(f"/proc/{w}/task")
                 if t == str(w) or open(f"/proc/{w}/task/{t}/comm").read().startswith("forkd-")]
        assert len(tasks) == 1 + 3 + 1, tasks     # main, pool, acceptor
        for t in tasks:
            with open(f"/proc/{w}/task/{t}/status") as f:
                blk = int(re.search(r"^SigBlk:\s+([0-9a-f]+)", f.read(), re.M).group(1), 16)
            missing = [s for s in ASYNC_SIGNALS if not blk & (1 << (s - 1))]
            assert missing == [], f"worker {w} thread {t} takes signals {missing}"


def test_worker_survives_hup_and_usr1_sent_to_it(forkd_factory):
    """A signal sent to a worker process (not the master) must not kill it:
    no pool thread runs a default action."""
    d = forkd_factory(workers=1, threads=4)
    w = d.workers()[0]
    c = d.client()
    assert c.ask("a") == "Echo: a"
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        os.kill(w, sig)
    assert c.ask("b") == "Echo: b"
    assert d.client().ask("c") == "Echo: c"
    assert d.workers() == [w] and alive(w)


def time_wait_on(port):
    """Sockets in TIME_WAIT whose local port is port (/proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            col = row.split()
            if int(col[1].split(":")[1], 16) == port and col[3] == "06":
                n += 1
    return n


def test_restart_on_the_same_port_right_after_a_stop(forkd_factory):
    """The server closes its clients at a stop, so their connections sit in
    TIME_WAIT on its port; SO_REUSEADDR lets the next forkd bind at once."""
    d = forkd_factory(workers=1, threads=2, shutdown_timeout=1)
    clients = [d.client() for _ in range(3)]
    for c in clients:
        assert c.ask("x") == "Echo: x"
    d.signal(signal.SIGTERM)
    for c in clients:
        assert c.line() == "ERR server shutting down"
        assert c.eof()
        c.close()
    assert d.wait() == 0
    try:
        wait_until(lambda: time_wait_on(d.port), 2, "TIME_WAIT connections on the port")
    except AssertionError:
        # the kernel keeps no TIME_WAIT once tcp_max_tw_buckets are in use
        # (a busy machine): nothing would stand in the way of the bind
        pytest.skip("no TIME_WAIT kept on the port (tcp_max_tw_buckets full?)")
    d2 = forkd_factory([{"service": "echo", "port": d.port}], workers=1, threads=2)
    assert d2.client().ask("again") == "Echo: again"
    assert f"listening on 127.0.0.1:{d.port} (echo)" in d2.log()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listen_backlog_as_configured(forkd_factory):
    d = forkd_factory(workers=1, threads=2, backlog=77)
    out = subprocess.run(["ss", "-Hltn", f"sport = :{d.port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    # State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog
    assert out[:1] == ["LISTEN"] and out[2] == "77", out
