"""The stats service: memcached-style counters, checked against what the
test itself did and against /proc."""
import os
import re
import signal
import subprocess

from conftest import FORKD, wait_until, owner

STAT_LINE = re.compile(r"STAT ([A-Za-z0-9_.]+) (\S+)")


def stats(c):
    """Send `stats`; return {name: value} after checking the reply's shape."""
    c.send("stats\n")
    lines = c.lines_until("END")
    out = {}
    for l in lines[:-1]:
        m = STAT_LINE.fullmatch(l)
        assert m, f"not a STAT line: {l!r}"
        assert m.group(1) not in out, f"{m.group(1)} given twice"
        out[m.group(1)] = m.group(2)
    return out


def num(st, name):
    assert name in st, f"no STAT {name}"
    return int(st[name])


def per_worker(st):
    """{slot: {"pid": .., "connections": .., ...}} from the worker.N.* lines."""
    out = {}
    for k, v in st.items():
        m = re.fullmatch(r"worker\.(\d+)\.(\w+)", k)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return out


def test_stats_lines_then_end(forkd_factory):
    d = forkd_factory([{"service": "stats"}, {"service": "echo"}], workers=2, threads=4)
    c = d.client("stats")
    st = stats(c)
    assert num(st, "pid") == d.pid
    version = subprocess.run([FORKD, "-V"], capture_output=True, text=True).stdout.split()[1]
    assert st["version"] == version
    assert 0 <= num(st, "uptime") <= 5
    assert num(st, "workers") == 2
    assert num(st, "threads") == 4
    assert num(st, "generation") == 1
    assert num(st, "worker_restarts") == 0
    # this very connection is counted
    assert num(st, "curr_connections") == 1
    assert num(st, "total_connections") == 1
    assert num(st, "stats_curr_connections") == 1
    assert num(st, "stats_total_connections") == 1
    for svc in ("echo", "calc", "chat"):
        assert num(st, f"{svc}_curr_connections") == 0
        assert num(st, f"{svc}_total_connections") == 0
    ws = per_worker(st)
    assert sorted(int(w["pid"]) for w in ws.values()) == sorted(d.workers())
    for slot, w in ws.items():
        for key in ("pid", "connections", "served"):
            assert key in w, f"no STAT worker.{slot}.{key}"
    assert sum(int(w["connections"]) for w in ws.values()) == 1
    assert sum(int(w["served"]) for w in ws.values()) == 1
    # the same request again, any case, trailing blanks: same shape
    c.send("STATS  \n")
    assert c.lines_until("END")[0] == f"STAT pid {d.pid}"


def test_uptime_counts_seconds(forkd_factory):
    d = forkd_factory([{"service": "stats"}], workers=1, threads=2)
    c = d.client("stats")
    first = num(stats(c), "uptime")
    wait_until(lambda: num(stats(c), "uptime") >= first + 1, 3, "uptime to grow")


def test_connection_counts_follow_traffic(forkd_factory):
    d = forkd_factory([{"service": "stats"}, {"service": "echo"}, {"service": "calc"}],
                      workers=2, threads=4)
    s = d.client("stats")
    base = stats(s)
    assert num(base, "curr_connections") == 1
    K = 7
    echoes = [d.client("echo") for _ in range(K)]
    for i, e in enumerate(echoes):
        assert e.ask(f"hi {i}") == f"Echo: hi {i}"
    calcs = [d.client("calc") for _ in range(3)]
    for cc in calcs:
        assert cc.ask("add 1 1") == "2"
    st = stats(s)
    assert num(st, "curr_connections") == 1 + K + 3
    assert num(st, "echo_curr_connections") == K
    assert num(st, "calc_curr_connections") == 3
    assert num(st, "echo_total_connections") == K
    assert num(st, "calc_total_connections") == 3
    assert num(st, "total_connections") == 1 + K + 3

    # each worker's own count is the connections it really holds
    held = {}
    for c in [s] + echoes + calcs:
        w = owner(d, c)
        held[w] = held.get(w, 0) + 1
    ws = per_worker(st)
    assert {int(w["pid"]): int(w["connections"]) for w in ws.values()} == \
        {w: held.get(w, 0) for w in d.workers()}
    assert sum(int(w["served"]) for w in ws.values()) == 1 + K + 3

    for c in echoes + calcs:
        c.close()

    def back():
        st = stats(s)
        return st if num(st, "curr_connections") == 1 else None
    st = wait_until(back, 5, "curr_connections to come back to 1")
    assert num(st, "echo_curr_connections") == 0
    assert num(st, "calc_curr_connections") == 0
    assert sum(int(w["connections"]) for w in per_worker(st).values()) == 1
    # totals keep what was served: exactly the connections made
    assert num(st, "total_connections") == 1 + K + 3
    assert num(st, "echo_total_connections") == K

    # connections that quit count the same way
    for _ in range(4):
        e = d.client("echo")
        e.send("quit\n")
        assert e.line() == "Bye"
        assert e.eof()
    st = wait_until(back, 5, "curr_connections to come back to 1")
    assert num(st, "total_connections") == 1 + K + 3 + 4
    assert num(st, "echo_total_connections") == K + 4


def test_requests_are_counted(forkd_factory):
    d = forkd_factory([{"service": "stats"}, {"service": "echo"}], workers=1, threads=2)
    s = d.client("stats")
    r0 = num(stats(s), "requests")
    e = d.client("echo")
    for i in range(5):
        assert e.ask(f"r{i}") == f"Echo: r{i}"
    # five echo lines plus the previous stats request
    st = stats(s)
    assert num(st, "requests") == r0 + 1 + 5
    w = per_worker(st)
    assert sum(int(x["requests"]) for x in w.values()) == num(st, "requests")


def test_worker_restarts_after_a_kill(forkd_factory):
    d = forkd_factory([{"service": "stats"}], workers=2, threads=2)
    st = stats(d.client("stats"))
    assert num(st, "worker_restarts") == 0
    pids = sorted(int(w["pid"]) for w in per_worker(st).values())
    assert pids == sorted(d.workers())
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)

    def restarted():
        try:
            st = stats(d.client("stats", timeout=2))
        except OSError:
            return None
        return st if num(st, "worker_restarts") >= 1 else None
    st = wait_until(restarted, 5, "worker_restarts to grow")
    assert num(st, "worker_restarts") == 1
    assert num(st, "workers") == 2

    def replaced():
        st = stats(d.client("stats", timeout=2))
        now = sorted(int(w["pid"]) for w in per_worker(st).values())
        return now if victim not in now and len(now) == 2 else None
    now = wait_until(replaced, 5, "the killed worker's slot to show its new pid")
    assert now == sorted(d.workers())
    assert victim not in now and pids[1] in now
    # a second kill counts again
    os.kill(now[0], signal.SIGKILL)
    wait_until(lambda: num(stats(d.client("stats", timeout=2)), "worker_restarts") == 2,
               5, "worker_restarts to reach 2")


def test_unknown_command_is_an_error_line(forkd_factory):
    d = forkd_factory([{"service": "stats"}], workers=1, threads=2)
    c = d.client("stats")
    for req in ("stat", "stats items", "help", "", "get foo"):
        assert c.ask(req) == "ERR unknown command (try: stats, quit)", req
    # the session goes on
    assert c.ask("stats").startswith("STAT pid ")
    c.lines_until("END")
