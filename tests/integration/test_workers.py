"""The master's care of its workers: crashes, crash loops, SIGTTIN/SIGTTOU,
recycling, hung workers and the systemd watchdog."""
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import FORKD, Client, alive, children, wait_until, socket_inodes


def start_with(d, argv, wait=True, pass_fds=(), preexec_fn=None):
    """Start forkd through another command (same pid once it execs)."""
    d.logf = open(d.log_path, "ab")
    d.proc = subprocess.Popen(argv, env=d.env, stdout=d.logf, stderr=subprocess.STDOUT,
                              pass_fds=pass_fds, preexec_fn=preexec_fn)
    if wait:
        d.notify.wait_for("READY=1", timeout=10)
    return d


def stats(d):
    c = d.client("stats")
    c.send("stats\n")
    out = {}
    for l in c.lines_until("END")[:-1]:
        parts = l.split(" ", 2)
        out[parts[1]] = parts[2]
    c.close()
    return out


def owner(d, client):
    """The worker pid holding the server side of a client's connection."""
    cport = client.sock.getsockname()[1]
    local = f"0100007F:{client.sock.getpeername()[1]:04X}"
    remote = f"0100007F:{cport:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        inodes = [int(l.split()[9]) for l in f
                  if l.split()[1] == local and l.split()[2] == remote]
    for w in d.workers():
        if set(inodes) & set(socket_inodes(w).values()):
            return w
    return None


def requests_of(d, pid):
    """Requests answered by the worker with this pid, from its stats lines."""
    s = stats(d)
    for k, v in s.items():
        if k.startswith("worker.") and k.endswith(".pid") and v == str(pid):
            return int(s[k[:-len("pid")] + "requests"])
    return 0


def logged(d, pattern):
    return re.search(pattern, d.log())


def signal_taken(pid, sig):
    """True once sig is no longer pending for the process (the master read it)."""
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("ShdPnd:"):
                return not int(l.split()[1], 16) & (1 << (sig - 1))
    return False


def test_kill_9_under_load_replaced_at_once_others_unaffected(forkd_factory, capsys):
    """kill -9 of a worker while clients churn and long sessions sit on both
    workers: only what the victim held fails, the survivor's sessions go on,
    and the replacement serves a connection within a second."""
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], workers=2, threads=4)
    t_ready = time.monotonic()
    sessions = [d.client() for _ in range(16)]
    for i, c in enumerate(sessions):
        assert c.ask(f"a{i}") == f"Echo: a{i}"
    by = {}
    for c in sessions:
        by.setdefault(owner(d, c), []).append(c)
    assert None not in by and len(by) == 2, f"sessions not on both workers: {by.keys()}"

    stop = threading.Event()
    lock = threading.Lock()
    results = []        # (thread, started, ok, why)

    def churn(n):
        while not stop.is_set():
            t = time.monotonic()
            try:
                c = Client(d.port, timeout=5)
                try:
                    got = c.ask("c")
                finally:
                    c.close()
                ok, why = got == "Echo: c", f"answer {got!r}"
            except OSError as e:
                ok, why = False, repr(e)
            with lock:
                results.append((n, t, ok, why))

    def done():
        with lock:
            return len(results)

    nthreads = 4
    ts = [threading.Thread(target=churn, args=(n,), daemon=True) for n in range(nthreads)]
    for t in ts:
        t.start()
    held = []
    try:
        # a worker that dies within 2 s of its start counts as a crash loop
        # and is replaced after a backoff: let this one be an established one
        wait_until(lambda: done() >= 200 and time.monotonic() - t_ready > 2.2, 10,
                   "load on an established worker")
        victim, survivor = list(by)
        lost = len(by[victim])
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = wait_until(lambda: [w for w in d.workers() if w not in (victim, survivor)],
                         2, "a new worker")[0]
        t_new = time.monotonic()
        # the first request the new worker answers: its own counters in stats
        # (polled cheaply; a lookup in /proc/net/tcp takes long under churn)
        wait_until(lambda: requests_of(d, new) > 0, 2,
                   "a connection served by the new worker")
        served_by_new = time.monotonic()
        # and it serves echo sessions, like the one it dropped
        for _ in range(200):
            c = d.client()
            assert c.ask("n") == "Echo: n"
            held.append(c)
            if owner(d, c) == new:
                break
        else:
            raise AssertionError("the replacement worker took no echo session")
        # the survivor's sessions work all along
        for i, c in enumerate(by[survivor]):
            assert c.ask(f"b{i}") == f"Echo: b{i}"
        n = done()
        wait_until(lambda: done() >= n + 200, 10, "load after the replacement")
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=10)
    for c in by[victim]:
        try:
            assert c.ask("dead", timeout=2) is None
        except (ConnectionResetError, BrokenPipeError):
            pass
    failed = [r for r in results if not r[2]]
    after = [r for r in results if r[1] >= t_kill]
    with capsys.disabled():
        print(f"\n[kill -9 under load] new worker forked {(t_new - t_kill) * 1000:.0f} ms "
              f"after the kill, served its first connection "
              f"{(served_by_new - t_kill) * 1000:.0f} ms after it; churn connections "
              f"{len(results)} ({len(after)} after the kill), failed {len(failed)}; "
              f"the victim's {lost} long sessions ended, the survivor's "
              f"{len(by[survivor])} went on")
    # only connections in flight on the victim at the kill may fail: at most
    # one per churning client, all begun before the kill
    assert len(failed) <= nthreads, failed
    assert all(r[1] < t_kill for r in failed), failed
    assert len({r[0] for r in failed}) == len(failed), failed
    assert len(after) >= 200
    assert served_by_new - t_kill < 1.0
    wait_until(lambda: logged(d, rf"worker \d+ \(pid {victim}\) was killed by signal 9"),
               2, "the death in the log")
    assert sorted(d.workers()) == sorted([survivor, new])
    assert stats(d)["worker_restarts"] == "1"


def test_crash_loop_backoff_doubles_then_clears(forkd_factory, capsys):
    """Workers killed soon after they start are replaced after 100, 200, 400 ms,
    which the log and STATUS= say; once they serve again STATUS= drops the note,
    and after a quiet spell the next early death starts again at 100 ms."""
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], workers=2, threads=2)
    survivor, victim = d.workers()
    seen = {survivor}
    delays = []

    def kill_fresh(expect_ms):
        nonlocal victim
        start = len(d.notify.messages)
        t0 = time.monotonic()
        before = len(re.findall(r"next in \d+ ms", d.log()))
        os.kill(victim, signal.SIGKILL)
        seen.add(victim)
        wait_until(lambda: len(re.findall(r"next in \d+ ms", d.log())) > before, 3,
                   "the backoff in the log")
        assert re.findall(r"workers dying at start: next in (\d+) ms", d.log())[-1] == \
            str(expect_ms), d.log()
        d.notify.wait_for(f"STATUS=workers dying at start: next in {expect_ms} ms",
                          start=start)
        new = wait_until(lambda: [w for w in d.workers() if w not in seen], 3,
                         "the replacement")
        delays.append(time.monotonic() - t0)
        # never sooner than the backoff it announced
        assert delays[-1] >= expect_ms / 1000 * 0.9, (expect_ms, delays)
        assert delays[-1] < expect_ms / 1000 + 0.5, (expect_ms, delays)
        victim = new[0]
        seen.add(victim)

    for ms in (100, 200, 400):
        kill_fresh(ms)
    assert not logged(d, r"next in 800 ms")
    after = len(d.notify.messages)
    # the replacement serves: STATUS= is the plain counts again, and stays so
    clean = d.notify.wait_for("STATUS=2 workers", start=after, timeout=5)
    wait_until(lambda: stats(d)["workers_ready"] == "2", 3, "two ready workers")
    assert survivor in d.workers()
    assert d.client().ask("x") == "Echo: x"
    d.notify.wait_for("STATUS=", start=clean + 1, timeout=3)   # served went up
    assert not [m for m in d.notify.messages[clean:] if "dying" in m], \
        d.notify.messages[clean:]
    # workers up for two seconds: the next early death starts again at 100 ms
    wait_until(lambda: logged(d, r"crash-loop backoff reset"), 5, "the backoff reset")
    d.signal(signal.SIGTTIN)
    victim = wait_until(lambda: [w for w in d.workers() if w not in seen], 3,
                        "the SIGTTIN worker")[0]
    kill_fresh(100)
    assert len(re.findall(r"next in 100 ms", d.log())) == 2
    assert not logged(d, r"next in 800 ms"), "the backoff did not start over"
    with capsys.disabled():
        print("\n[crash loop] kill -9 to replacement: "
              + ", ".join(f"{t * 1000:.0f} ms" for t in delays)
              + " (backoff 100, 200, 400, then 100 after the reset)")


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_gives_up_when_workers_cannot_start(forkd_factory, workers):
    """In a user namespace where only root is mapped, forkd believes it is root
    but its workers cannot switch to 'nobody': every one dies at start."""
    d = forkd_factory(start=False, workers=workers, threads=2, shutdown_timeout=1,
                      user="nobody", group="nogroup")
    start_with(d, ["unshare", "--user", "--map-root-user", FORKD, "-c", d.conf],
               wait=False)
    try:
        try:
            rc = d.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            rc = None
        log = d.log()
        assert "cannot drop supplementary groups" in log or "cannot set" in log, log
        assert "giving up:" in log, log
        assert rc is not None, (f"the master logged 'giving up' but is still running "
                                f"8 s later; its children: "
                                f"{[(p, alive(p)) for p in children(d.pid)]}")
        assert rc != 0
        # everything the daemon sent is in the socket by now (it has exited)
        d.notify.poll()
        assert d.notify.messages, "no notification at all (not even STATUS=)"
        assert "READY=1" not in "".join(d.notify.messages), d.notify.messages
        # the backoff before each new attempt, then the reason, in STATUS=
        steps = [m for m in d.notify.messages if "workers dying at start" in m]
        assert [re.search(r"next in (\d+) ms", m).group(1) for m in steps] == \
            ["100", "200", "400", "800"], d.notify.messages
        assert d.notify.messages[-1].startswith(
            "STATUS=failed: 5 workers in a row died before they could serve"), \
            d.notify.messages
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_sigttin_sigttou(forkd_factory):
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], workers=2, threads=2)
    assert stats(d)["workers"] == "2"
    start = len(d.notify.messages)
    d.signal(signal.SIGTTIN)
    wait_until(lambda: "SIGTTIN: 3 workers wanted" in d.log(), 3, "SIGTTIN in the log")
    wait_until(lambda: len(d.workers()) == 3, 3, "three workers")
    s = stats(d)
    assert s["workers"] == "3"
    wait_until(lambda: stats(d)["workers_ready"] == "3", 3, "three ready workers")
    d.notify.wait_for("STATUS=3 workers", start=start)
    assert d.client().ask("x") == "Echo: x"

    for want in (2, 1):
        d.signal(signal.SIGTTOU)
        wait_until(lambda: f"SIGTTOU: {want} worker{'s' if want > 1 else ''} wanted"
                   in d.log(), 3,
                   f"SIGTTOU to {want}")
        wait_until(lambda: len(d.workers()) == want, 5, f"{want} workers")
        assert stats(d)["workers"] == str(want)
        assert d.client().ask("x") == "Echo: x"
    d.notify.wait_for("STATUS=1 worker,", start=start)

    # at one worker, SIGTTOU does nothing
    d.signal(signal.SIGTTOU)
    wait_until(lambda: signal_taken(d.pid, signal.SIGTTOU), 3, "the master to take SIGTTOU")
    d.signal(signal.SIGTTIN)
    wait_until(lambda: "SIGTTIN: 2 workers wanted" in d.log() or
               "SIGTTIN: 1 worker wanted" in d.log(), 3, "the next SIGTTIN")
    log = d.log()
    assert "0 workers wanted" not in log
    assert "SIGTTIN: 2 workers wanted" in log
    wait_until(lambda: len(d.workers()) == 2, 5, "two workers again")
    assert d.client().ask("x") == "Echo: x"


def test_recycling_after_max_requests(forkd_factory):
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}], workers=2, threads=2,
                      max_requests_per_worker=20, shutdown_timeout=2)
    first = set(d.workers())
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    failures = []

    def load():
        for _ in range(5000):
            if stop.is_set():
                return
            try:
                c = Client(d.port, timeout=5)
                got = c.ask("r")
                c.close()
                ok, why = got == "Echo: r", f"answer {got!r}"
            except OSError as e:
                ok, why = False, repr(e)
            with lock:
                counts["ok" if ok else "failed"] += 1
                if not ok and len(failures) < 20:
                    failures.append(why)

    ts = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in ts:
        t.start()
    ready_seen = set()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = stats(d)
            ready_seen.add(int(s["workers_ready"]))
            if int(s["worker_recycles"]) >= 3 and not (first & set(d.workers())):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=15)
    s = stats(d)
    print(f"recycling: {counts['ok']} connections ok, {counts['failed']} failed, "
          f"worker_recycles {s['worker_recycles']}, ready counts seen {sorted(ready_seen)}")
    assert counts["failed"] == 0, failures
    assert int(s["worker_recycles"]) >= 3
    assert len(re.findall(r"replacing worker \d+ \(pid \d+\) after \d+ connections",
                          d.log())) >= 3
    assert not first & set(d.workers()), "an original worker was never replaced"
    # one at a time: capacity never dropped below, nor rose above, one spare
    assert min(ready_seen) >= 2 and max(ready_seen) <= 3, ready_seen
    assert s["worker_restarts"] == "0"
    wait_until(lambda: len(d.workers()) == 2, 5, "two workers at rest")


def test_hung_worker_is_killed_and_replaced(forkd_factory):
    d = forkd_factory([{"service": "echo"}], workers=2, threads=2, worker_timeout=1)
    victim, other = d.workers()
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_until(lambda: logged(d, rf"worker \d+ \(pid {victim}\) missed its heartbeat"),
                   4, "the missed heartbeat")
        wait_until(lambda: not alive(victim), 2, "the hung worker to be killed")
        wait_until(lambda: len(d.workers()) == 2 and victim not in d.workers(), 2,
                   "a replacement")
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGCONT)
    took = time.monotonic() - t0
    # heartbeats come every 250 ms: the last one may predate SIGSTOP by that much
    assert 0.7 <= took <= 4.0, took
    assert logged(d, rf"worker \d+ \(pid {victim}\) was killed by signal 9 .*\(hung\)")
    new = [w for w in d.workers() if w != other]
    assert len(new) == 1
    held = []
    for _ in range(40):
        c = d.client()
        assert c.ask("h") == "Echo: h"
        held.append(c)
        if owner(d, c) == new[0]:
            break
    else:
        raise AssertionError("the replacement worker took no connection")


def watchdog_count(d, start=0):
    d.notify.poll()
    return sum(1 for m in d.notify.messages[start:] if "WATCHDOG=1" in m.split("\n"))


def start_with_watchdog_pid(d, pid_expr):
    d.env["WATCHDOG_USEC"] = "400000"
    return start_with(d, ["sh", "-c", f'WATCHDOG_PID={pid_expr}; export WATCHDOG_PID; '
                          'exec "$0" -c "$1"', FORKD, d.conf])


def test_watchdog_pings_while_workers_are_healthy(forkd_factory):
    d = forkd_factory(start=False, workers=2, threads=2, worker_timeout=0)
    start_with_watchdog_pid(d, "$$")
    i = d.notify.wait_for("READY=1")
    t0 = time.monotonic()
    wait_until(lambda: watchdog_count(d, i) >= 4, 3, "four WATCHDOG=1")
    # 400 ms wanted: pinged at least every 200-250 ms
    assert time.monotonic() - t0 < 1.6
    # a stopped worker makes the daemon unhealthy: the pings stop
    victim = d.workers()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        def silent():
            n = watchdog_count(d)
            time.sleep(1.0)
            return watchdog_count(d) == n
        wait_until(silent, 9, "the watchdog pings to stop while a worker is stopped",
                   interval=0)
    finally:
        os.kill(victim, signal.SIGCONT)
    n = watchdog_count(d)
    wait_until(lambda: watchdog_count(d) >= n + 2, 3, "the pings to resume")
    assert victim in d.workers()   # unhealthy, not killed: worker_timeout = 0


def test_watchdog_for_another_pid_is_not_ours(forkd_factory):
    d = forkd_factory(start=False, workers=1, threads=2)
    start_with_watchdog_pid(d, "1")
    # the daemon pings every 250 ms when it is on: give it four chances
    c = d.client()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        assert c.ask("x") == "Echo: x"
        time.sleep(0.1)
    assert watchdog_count(d) == 0
