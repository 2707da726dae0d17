"""Limits that hold against hostile or careless clients."""
import grp
import os
import pwd
import random
import resource
import signal
import socket
import subprocess
import time

import statistics
import tempfile
import threading

import pytest

from conftest import (FORKD, IS_ROOT, Client, alive, conf_text, free_port, owner,
                      wait_until)

# The privilege tests start forkd as root; as anyone else they cannot run.
# Their skips must not go unnoticed: privilege dropping is then untested.
needs_root = pytest.mark.skipif(
    not IS_ROOT,
    reason="NOT TESTED: privilege dropping (setgroups/setgid/setuid, refusing root "
           "workers) needs the suite to run as root; run it as root to cover it")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    return 0


def nfds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def stat_value(d, name):
    c = d.client("stats")
    c.send("stats\n")
    for l in c.lines_until("END"):
        parts = l.split()
        if len(parts) == 3 and parts[1] == name:
            c.close()
            return int(parts[2])
    raise AssertionError(f"no STAT {name}")


def test_max_connections_across_workers(forkd_factory):
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], workers=2, threads=2,
                      max_connections=6)
    held = [d.client() for _ in range(5)]   # + the stats probe below = 6
    for c in held:
        assert c.ask("x") == "Echo: x"
    # the held clients sit on both workers: a limit counted per process
    # (6 each) would let the extra client in below
    holders = {owner(d, c) for c in held}
    assert holders == set(d.workers()) and len(holders) == 2, \
        f"held clients are all on {holders}, workers are {d.workers()}"
    s = d.client("stats")
    s.send("stats\n")
    s.lines_until("END")
    extra = d.client()
    assert extra.line() == "ERR too many connections"
    assert extra.eof()
    # the others are still served, and a freed place is taken again
    assert held[0].ask("still") == "Echo: still"
    held[1].close()
    s.close()
    wait_until(lambda: try_echo(d), 5, "a place to free up")


def test_max_connections_holds_under_a_burst(forkd_factory):
    """Clients arriving at once, taken by two workers, never get more places than
    max_connections; a place refused in the race is given again later."""
    d = forkd_factory(workers=2, threads=2, max_connections=20)
    n = 80
    replies, socks = [None] * n, [None] * n
    start = threading.Barrier(n)

    def one(i):
        s = socket.socket()
        s.settimeout(10)
        socks[i] = s
        start.wait()
        try:
            s.connect(("127.0.0.1", d.port))
            s.sendall(b"x\n")
            replies[i] = s.makefile("rb").readline()
        except OSError as e:
            replies[i] = repr(e).encode()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    try:
        admitted = sum(r == b"Echo: x\r\n" for r in replies)
        refused = sum(r == b"ERR too many connections\r\n" for r in replies)
        assert admitted + refused == n, [r for r in replies
                                         if r not in (b"Echo: x\r\n", b"ERR too many connections\r\n")]
        assert 0 < admitted <= 20
        extra = []
        for _ in range(100):
            if admitted == 20:
                break
            c = d.client()
            if c.ask("y") == "Echo: y":
                admitted += 1
                extra.append(c)
            else:
                c.close()
        assert admitted == 20
        over = d.client()
        assert over.line() == "ERR too many connections"
        assert over.eof()
    finally:
        for s in socks:
            s.close()


def try_echo(d):
    c = d.client()
    try:
        return c.ask("again") == "Echo: again"
    finally:
        c.close()


def test_max_connections_per_ip(forkd_factory):
    d = forkd_factory([{"service": "echo", "address": "0.0.0.0"}], workers=2, threads=2,
                      max_connections_per_ip=3)
    mine = [Client(d.port, source="127.0.0.2") for _ in range(3)]
    for c in mine:
        assert c.ask("a") == "Echo: a"
    extra = Client(d.port, source="127.0.0.2")
    assert extra.line() == "ERR too many connections"
    assert extra.eof()
    # another address is not affected
    other = [Client(d.port, source="127.0.0.3") for _ in range(3)]
    for c in other:
        assert c.ask("b") == "Echo: b"
    # closing one gives the address its place back
    mine[0].close()

    def again():
        c = Client(d.port, source="127.0.0.2")
        try:
            return c.ask("c") == "Echo: c"
        except (ConnectionError, AssertionError):
            return False
        finally:
            c.close()
    wait_until(again, 5, "the address's place to come back")


def test_per_ip_counts_survive_a_worker_crash(forkd_factory):
    d = forkd_factory([{"service": "echo", "address": "0.0.0.0"}], workers=2, threads=2,
                      max_connections_per_ip=2)
    a = Client(d.port, source="127.0.0.4")
    b = Client(d.port, source="127.0.0.4")
    assert a.ask("1") == "Echo: 1" and b.ask("2") == "Echo: 2"
    for w in d.workers():
        os.kill(w, signal.SIGKILL)
    wait_until(lambda: len(d.workers()) == 2, 5, "replacement workers")
    # the dead workers' counts went with them: the address has its places again
    wait_until(lambda: Client(d.port, source="127.0.0.4").ask("3") == "Echo: 3", 5,
               "the address to be served")
    c2 = Client(d.port, source="127.0.0.4")
    assert c2.ask("4") == "Echo: 4"


def test_out_of_descriptors_backs_off_and_recovers(forkd_factory):
    d = forkd_factory(start=False, workers=1, threads=2)

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    d.start(preexec_fn=low_nofile)
    w = d.workers()[0]
    t_start = time.monotonic()
    clients = []
    for i in range(90):
        try:
            clients.append(Client(d.port, timeout=0.5))
        except OSError:
            break
    for c in clients:
        c.send("x\n")
    answered = 0
    for c in clients:
        try:
            if c.line(timeout=0.2) == "Echo: x":
                answered += 1
        except (socket.timeout, OSError):
            pass
    assert 0 < answered < len(clients)
    # it does not spin on accept while out of descriptors
    t0 = cpu_ticks(w)
    time.sleep(1.0)
    used = cpu_ticks(w) - t0
    assert used < 30, f"worker used {used} ticks in 1 s while out of descriptors"
    wait_until(lambda: "cannot accept (pausing" in d.log(), 5, "the pause to be logged")
    # logged once per 10 s interval, not once per attempt
    assert d.log().count("cannot accept (pausing") <= 1 + (time.monotonic() - t_start) / 10
    # descriptors come back: the waiting clients get served
    for c in clients[:answered]:
        c.close()
    late = clients[answered:]
    for c in late[:20]:
        assert c.line(timeout=5) == "Echo: x"
        assert c.ask("y", timeout=5) == "Echo: y"


def test_trickling_client_is_cut_at_idle_timeout(forkd_factory):
    d = forkd_factory(workers=1, threads=2, idle_timeout=2)
    c = d.client()
    t0 = time.monotonic()
    got = None
    while time.monotonic() - t0 < 6:
        try:
            c.send(b"a")
        except OSError:
            break
        c.sock.settimeout(0.2)
        try:
            data = c.sock.recv(4096)
        except socket.timeout:
            continue
        got = data
        break
    elapsed = time.monotonic() - t0
    assert got is not None and got.startswith(b"ERR idle timeout\r\n")
    assert 1.5 < elapsed < 4


def test_client_that_never_reads_is_cut_with_bounded_output(forkd_factory):
    d = forkd_factory(workers=1, threads=2, send_timeout=2, max_line=4096, max_output=8192)
    w = d.workers()[0]
    base = rss_kb(w)
    c = d.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sock.settimeout(0.2)
    sent = 0
    t0 = time.monotonic()
    cut = False
    while time.monotonic() - t0 < 8:
        try:
            c.sock.send(b"y" * 4000 + b"\n")
            sent += 4001
        except socket.timeout:
            pass
        except OSError:
            cut = True
            break
        if not alive(w):
            break
        if stat_open(d) == 0 and time.monotonic() - t0 > 1:
            cut = True
            break
    assert cut, "the stalled client was never closed"
    assert time.monotonic() - t0 < 6
    assert rss_kb(w) - base < 4096, "output queued past max_output"


def stat_open(d):
    """Open connections according to the worker's /proc: sockets minus listeners
    and minus the one to the master that sessions are handed over through."""
    w = d.workers()[0]
    socks = 0
    for fd in os.listdir(f"/proc/{w}/fd"):
        try:
            if os.readlink(f"/proc/{w}/fd/{fd}").startswith("socket:"):
                socks += 1
        except OSError:
            pass
    return socks - len(d.listeners) - 1


def round_trip_median(c, n, tag):
    times = []
    for i in range(n):
        t0 = time.monotonic()
        assert c.ask(f"{tag}{i}") == f"Echo: {tag}{i}"
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def test_stalled_clients_hold_no_thread(forkd_factory):
    """100 clients that trickle or never read, against 2 pool threads: a normal
    client's round trips take no longer than they did before they came."""
    d = forkd_factory(workers=1, threads=2, idle_timeout=30, send_timeout=30)
    normal = d.client()
    round_trip_median(normal, 5, "w")        # warm up: buffers at their size
    baseline = round_trip_median(normal, 20, "b")
    stalled = []
    for i in range(50):
        c = d.client()
        c.send("half a line without end")
        stalled.append(c)
    for i in range(50):
        c = d.client()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sock.settimeout(0.05)
        try:
            for _ in range(40):
                c.sock.send(b"z" * 2000 + b"\n")
        except (socket.timeout, OSError):
            pass
        stalled.append(c)
    # all 100 are accepted and held by the worker (plus the normal client)
    wait_until(lambda: stat_open(d) == 101, 5, "the worker to hold all 101 clients")
    loaded = round_trip_median(normal, 20, "n")
    print(f"median echo round trip: {baseline * 1000:.2f} ms alone, "
          f"{loaded * 1000:.2f} ms with 100 stalled clients")
    assert loaded <= baseline + 0.020, \
        f"100 stalled clients slowed a round trip from {baseline * 1000:.2f} ms " \
        f"to {loaded * 1000:.2f} ms"
    assert stat_open(d) == 101, "a stalled client was dropped during the test"


def test_huge_line_costs_at_most_max_line(forkd_factory):
    d = forkd_factory(workers=1, threads=2, max_line=4096)
    w = d.workers()[0]
    c = d.client()
    assert c.ask("warm") == "Echo: warm"
    base = rss_kb(w)
    chunk = b"q" * 65536
    for _ in range(80):      # 5 MB without a newline
        c.send(chunk)
    c.send(b"\n")
    assert c.line() == "ERR line too long (max 4096 bytes)"
    assert c.ask("after") == "Echo: after"
    assert rss_kb(w) - base < 2048


@pytest.mark.parametrize("service", ["echo", "calc", "chat", "stats"])
def test_garbage_never_crashes_a_worker(forkd_factory, service):
    d = forkd_factory([{"service": service}], workers=1, threads=2, max_line=512)
    w = d.workers()[0]
    rnd = random.Random(1234)
    for i in range(30):
        c = d.client()
        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000)))
        blob += b"\x00\r\r\n\xff\xfe\xc0\x80\n/nick \x00\n/join \xff\n\r\n"
        try:
            c.send(blob)
        except OSError:
            pass
        c.close()
    c = d.client()
    c.send("quit\n")
    lines = []
    while True:
        l = c.line()
        if l is None:
            break
        lines.append(l)
    assert lines[-1] == "Bye"
    assert d.workers() == [w], "a worker died"


@needs_root
def test_workers_drop_privileges(forkd_factory):
    d = forkd_factory(workers=2, threads=2, user="nobody", group="nogroup")
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup")
    for w in d.workers():
        with open(f"/proc/{w}/status") as f:
            st = {l.split(":")[0]: l.split()[1:] for l in f}
        # real, effective, saved and filesystem ids: all dropped
        assert st["Uid"] == [str(nobody.pw_uid)] * 4, st["Uid"]
        assert st["Gid"] == [str(nogroup.gr_gid)] * 4, st["Gid"]
        # setgroups(1, &gid): the supplementary groups are exactly the
        # target group; root's (the test runner's) are gone
        assert st["Groups"] == [str(nogroup.gr_gid)], st["Groups"]
    assert d.client().ask("x") == "Echo: x"


@needs_root
def test_refuses_root_workers_unless_allowed(tmp_path):
    conf = tmp_path / "root.conf"
    port = free_port()
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": port, "service": "echo"}],
                              user="root", group="root", workers=1))
    r = subprocess.run([FORKD, "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert "refusing to run workers as root" in r.stderr
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": port, "service": "echo"}],
                              user="no-such-user-here", workers=1))
    r = subprocess.run([FORKD, "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "user 'no-such-user-here' does not exist" in r.stderr


@needs_root
def test_allow_root_runs_workers_as_root(forkd_factory):
    d = forkd_factory(workers=1, threads=2, user="root", group="root", allow_root=True)
    w = d.workers()[0]
    with open(f"/proc/{w}/status") as f:
        uid = [l for l in f if l.startswith("Uid:")][0].split()[1]
    assert uid == "0"
    assert "workers run as root" in d.log()


def config_fault(path):
    """forkd -t and a start with PATH: exit 1 and one message naming the file."""
    for args in (["-t", "-c", path], ["-c", path]):
        r = subprocess.run([FORKD] + args, capture_output=True, text=True, timeout=10)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert r.stderr.startswith(f"{path}:"), r.stderr
        yield r.stderr


def test_config_file_a_directory_empty_garbage_or_enormous(tmp_path):
    d = tmp_path / "dir.conf"
    d.mkdir()
    for err in config_fault(str(d)):
        assert err.startswith(f"{d}: is a directory"), err
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    for err in config_fault(str(empty)):
        assert err.startswith(f"{empty}: no 'listeners' defined"), err
    rnd = random.Random(99)
    nul = tmp_path / "binary.conf"
    nul.write_bytes(bytes(rnd.getrandbits(8) for _ in range(4096)) + b"\0")
    for err in config_fault(str(nul)):
        assert "NUL byte" in err and "not a text file" in err, err
    # binary without a NUL reaches the parser: a syntax error with its line
    text = tmp_path / "noise.conf"
    text.write_bytes(bytes(rnd.randint(1, 255) for _ in range(4096)))
    for err in config_fault(str(text)):
        assert err.startswith(f"{text}:") and "syntax error" in err, err
    huge = tmp_path / "huge.conf"
    with open(huge, "wb") as f:
        f.write(b"# padding\n" * (5 * 1024 * 1024))     # 50 MB of comments
    for err in config_fault(str(huge)):
        assert err.startswith(f"{huge}: too large ({50 * 1024 * 1024} bytes"), err


def drop_to_nobody():
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def test_config_file_unreadable():
    """chmod 000: forkd says the file cannot be opened and why. As root it runs
    as nobody, because root reads any file."""
    top = tempfile.mkdtemp(prefix="forkd-unreadable.")   # world-searchable
    try:
        os.chmod(top, 0o755)
        conf = os.path.join(top, "forkd.conf")
        with open(conf, "w") as f:
            f.write(conf_text([{"address": "127.0.0.1", "port": free_port(),
                                "service": "echo"}], workers=1))
        as_user = drop_to_nobody if IS_ROOT else None
        # readable, the same file and the same user are fine: only the mode
        # makes the difference below
        os.chmod(conf, 0o644)
        r = subprocess.run([FORKD, "-t", "-c", conf], capture_output=True, text=True,
                           timeout=10, preexec_fn=as_user)
        assert r.returncode == 0, r.stderr
        os.chmod(conf, 0)
        for args in (["-t", "-c", conf], ["-c", conf]):
            r = subprocess.run([FORKD] + args, capture_output=True, text=True,
                               timeout=10, preexec_fn=as_user)
            assert r.returncode == 1, (args, r.returncode, r.stderr)
            assert r.stderr.startswith(f"{conf}: cannot open: Permission denied"), r.stderr
    finally:
        for name in os.listdir(top):
            os.unlink(os.path.join(top, name))
        os.rmdir(top)


def test_kill_9_of_a_worker_loses_only_its_connections(forkd_factory):
    d = forkd_factory([{"service": "echo"}], workers=2, threads=2)
    clients = [d.client() for _ in range(20)]
    for c in clients:
        assert c.ask("x") == "Echo: x"
    victim = d.workers()[0]
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    lost = 0
    for c in clients:
        try:
            if c.ask("y", timeout=2) != "Echo: y":
                lost += 1
        except OSError:
            lost += 1
    assert 0 < lost < 20
    wait_until(lambda: len(d.workers()) == 2 and victim not in d.workers(), 2,
               "a replacement worker")
    assert d.client().ask("new") == "Echo: new"
    assert time.monotonic() - t0 < 3


def soak(forkd_factory):
    d = forkd_factory(workers=1, threads=2)
    w = d.workers()[0]

    def cycle(n):
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", d.port))
            s.sendall(b"soak\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                buf += s.recv(64)
            assert buf == b"Echo: soak\r\n"
            s.close()
    cycle(1000)                      # warm up: allocator and tables at their size
    wait_until(lambda: stat_open(d) == 0, 5, "connections to close")
    fds0, rss0 = nfds(w), rss_kb(w)
    cycle(10000)
    wait_until(lambda: stat_open(d) == 0, 5, "connections to close")
    fds1, rss1 = nfds(w), rss_kb(w)
    print(f"soak: 10000 connect/echo/close: fds {fds0} -> {fds1}, RSS {rss0} kB -> {rss1} kB")
    return fds0, fds1, rss0, rss1


def test_soak_descriptors_come_back(forkd_factory):
    fds0, fds1, _, _ = soak(forkd_factory)
    assert fds1 == fds0


# A sanitizer keeps freed memory in quarantine and grows shadow memory, so
# RSS says nothing about leaks there (LeakSanitizer covers those instead).
@pytest.mark.skipif(bool(os.environ.get("FORKD_SANITIZER")),
                    reason="RSS is not comparable in a sanitizer build")
def test_soak_memory_comes_back(forkd_factory):
    _, _, rss0, rss1 = soak(forkd_factory)
    assert rss1 - rss0 < 512


def test_no_client_is_timed_out_while_it_is_busy(forkd_factory):
    """Under load, lines are stamped by the pool while the sweeper reads its
    clock: a stamp newer than the sweeper's clock must not look idle."""
    bench = os.path.join(os.path.dirname(FORKD), "forkd-bench")
    errors = 0
    for i in range(3):
        d = forkd_factory(workers=2, threads=1)
        r = subprocess.run([bench, "rr", "--port", str(d.port), "-c", "50", "-d", "1",
                            "-w", "0.5"], capture_output=True, text=True, timeout=30)
        summary = [l for l in r.stdout.splitlines() if l.startswith("SUMMARY ")]
        assert summary, r.stdout + r.stderr
        fields = dict(kv.split("=", 1) for kv in summary[0].split()[1:])
        assert int(fields["requests"]) > 1000
        errors += int(fields["errors"])
        d.stop()
    assert errors == 0
