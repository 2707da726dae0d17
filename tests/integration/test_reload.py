"""Reloading: SIGHUP and `forkd --reload`, a new generation of workers, the
old one drained, listeners kept, added and removed, bad files refused."""
import os
import signal
import socket
import subprocess
import threading
import time

from conftest import FORKD, Client, alive, free_port, wait_until

RELOAD_LINE = "ERR server reloaded: please reconnect"


def reloadable(forkd_factory, tmp_path, **settings):
    """echo + stats, with a control socket so `forkd --reload` can reach it."""
    settings.setdefault("workers", 2)
    settings.setdefault("threads", 4)
    settings.setdefault("shutdown_timeout", 2)
    return forkd_factory([{"service": "echo"}, {"service": "stats"}],
                         control_socket=str(tmp_path / "ctl.sock"), **settings)


def stats(d):
    c = d.client("stats")
    c.send("stats\n")
    out = {}
    for l in c.lines_until("END")[:-1]:
        parts = l.split(" ", 2)
        assert parts[0] == "STAT" and len(parts) == 3, l
        out[parts[1]] = parts[2]
    c.close()
    return out


def reload_helper(d, timeout=40):
    return subprocess.run([FORKD, "--reload", "-c", d.conf], capture_output=True,
                          text=True, timeout=timeout)


def echo_once(d, text="x"):
    c = d.client()
    try:
        return c.ask(text)
    finally:
        c.close()


def listening_inodes(port):
    """Inodes of the sockets listening on 127.0.0.1:port, from /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for l in f:
            fields = l.split()
            if fields[1] == want and fields[3] == "0A":
                out.append(int(fields[9]))
    return out


def refused(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


def wait_ready_after(d, start, timeout=10.0):
    """Index of the first READY=1 at or after start, polled tightly (for timing)."""
    deadline = time.monotonic() + timeout
    while True:
        d.notify.poll()
        for i in range(start, len(d.notify.messages)):
            if "READY=1" in d.notify.messages[i].split("\n"):
                return i
        if time.monotonic() > deadline:
            raise AssertionError(f"no READY=1 after message {start} within {timeout}s: "
                                 f"{d.notify.messages[start:]}")
        time.sleep(0.002)


def test_sighup_reload_notifies_and_applies_the_new_file(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    assert echo_once(d) == "Echo: x"
    old = d.workers()
    assert len(old) == 2
    start = len(d.notify.messages)
    d.write_conf(echo={"prefix": "g2: "})
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    d.signal(signal.SIGHUP)
    r = d.notify.wait_for("RELOADING=1", start=start)
    after = time.clock_gettime(time.CLOCK_MONOTONIC)
    fields = dict(kv.split("=", 1) for kv in d.notify.messages[r].split("\n") if kv)
    assert fields.get("RELOADING") == "1", d.notify.messages[r]
    usec = int(fields["MONOTONIC_USEC"])
    # the daemon's CLOCK_MONOTONIC at the time of the signal, in microseconds
    assert before * 1e6 - 1000 <= usec <= after * 1e6 + 1000, (before, usec, after)
    ready = d.notify.wait_for("READY=1", start=r + 1)
    st = d.notify.wait_for("STATUS=", start=r + 1)
    assert "STATUS=reloaded: generation 2, 2 workers" in d.notify.messages[st]
    assert echo_once(d) == "g2: x"
    # the old generation had no sessions: it is gone, two new workers serve
    wait_until(lambda: not any(alive(p) for p in old), 5, "the old workers to exit")
    new = d.workers()
    assert len(new) == 2 and not set(new) & set(old)
    s = stats(d)
    assert s["generation"] == "2" and s["reloads"] == "1" and s["reload_failures"] == "0"
    assert "reloaded: generation 2, 2 workers" in d.log()
    assert ready > r


def bad_file(d):
    """Rewrite the file with an unknown key; the error the daemon must report."""
    d.write_conf(echo={"prefix": "bad: "}, no_such_setting=1)
    with open(d.conf) as f:
        line = 1 + [l.startswith("no_such_setting") for l in f].index(True)
    return f"{d.conf}:{line}: unknown setting 'no_such_setting'"


def test_bad_file_on_sighup_leaves_everything_running(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    workers = d.workers()
    where = bad_file(d)
    sighup_refused(d, where)
    wait_until(lambda: where in d.log(), 5, "the error in the log")
    assert echo_once(d) == "Echo: x"
    assert d.workers() == workers
    s = stats(d)
    assert s["generation"] == "1" and s["reload_failures"] == "1"


def test_reload_helper_exit_status_good_and_bad(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    # a good file: exit 0 and the outcome on stdout
    d.write_conf(echo={"prefix": "good: "})
    r = reload_helper(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reloaded: generation 2, 2 workers"
    assert echo_once(d) == "good: x"
    wait_until(lambda: len(d.workers()) == 2, 5, "the old generation to go")
    workers = d.workers()

    # a file with an unknown key: exit 1 and the reason; nothing changes
    where = bad_file(d)
    r = reload_helper(d)
    assert r.returncode == 1
    assert r.stdout == ""
    assert echo_once(d) == "good: x"
    assert d.workers() == workers
    assert f"forkd: reload failed: {where}" in r.stderr, r.stderr


def test_reload_failing_in_the_daemon_keeps_the_old_config(forkd_factory, tmp_path):
    """A file that parses but cannot be applied (its new port is taken):
    the daemon refuses it, SIGHUP and the helper alike."""
    d = reloadable(forkd_factory, tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    listeners = d.listeners + [{"address": "127.0.0.1", "port": port, "service": "echo"}]
    d.write_conf(listeners=listeners, echo={"prefix": "bad: "})
    with open(d.conf) as f:
        line = 1 + [f"port = {port};" in l for l in f].index(True)
    check_refused_reload(d, f"{d.conf}:{line}: cannot listen on 127.0.0.1:{port}")
    taken.close()


def test_workers_count_changes_by_reload(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path, workers=2)
    assert stats(d)["workers"] == "2"
    start = len(d.notify.messages)
    d.write_conf(workers=3)
    r = reload_helper(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reloaded: generation 2, 3 workers"
    wait_until(lambda: len(d.workers()) == 3, 5, "three workers")
    s = stats(d)
    assert s["workers"] == "3" and s["workers_ready"] == "3", s
    d.notify.wait_for("3 workers", start=start)


def test_reload_adds_and_removes_listeners(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    echo_port, stats_port = d.ports["echo"], d.ports["stats"]
    echo_inodes = listening_inodes(echo_port)
    assert len(echo_inodes) == 1
    calc_port = free_port()
    assert refused(calc_port)
    echo_l = [l for l in d.listeners if l["service"] == "echo"]
    d.write_conf(listeners=echo_l + [{"address": "127.0.0.1", "port": calc_port,
                                      "service": "calc"}])
    r = reload_helper(d)
    assert r.returncode == 0, r.stderr
    # the added listener serves
    c = Client(calc_port)
    assert c.ask("add 7 4") == "11"
    c.close()
    # the removed one is closed: connections are refused
    wait_until(lambda: refused(stats_port), 5, f"port {stats_port} to be closed")
    assert listening_inodes(stats_port) == []
    # the unchanged one is the very same socket, never closed and re-bound
    assert listening_inodes(echo_port) == echo_inodes
    assert echo_once(d) == "Echo: x"


def test_five_reloads_under_continuous_load(forkd_factory, tmp_path, capsys):
    shutdown_timeout = 4
    # the drain: sessions stay with their generation (test_handover.py has
    # the default, where they move)
    d = reloadable(forkd_factory, tmp_path, workers=2, threads=4,
                   shutdown_timeout=shutdown_timeout, reload_sessions="drain")
    prefixes = ["Echo: "] + [f"g{g}: " for g in range(2, 7)]
    allowed = {p + "x" for p in prefixes}
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    failures = []

    def load(i):
        for _ in range(20000):
            if stop.is_set():
                return
            try:
                c = Client(d.port, timeout=5)
                try:
                    got = c.ask("x")
                finally:
                    c.close()
                ok = got in allowed
                why = None if ok else f"answer {got!r}"
            except OSError as e:
                ok, why = False, repr(e)
            with lock:
                counts["ok" if ok else "failed"] += 1
                if why and len(failures) < 20:
                    failures.append(why)

    def ok_count():
        with lock:
            return counts["ok"]

    # a session that started before any reload
    old = d.client()
    assert old.ask("before") == "Echo: before"
    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    times = []
    stale = []      # answers from a retired generation after READY=1
    first_retired = None
    try:
        for gen in range(2, 7):
            n = ok_count()
            wait_until(lambda: ok_count() >= n + 30, 10, "load between reloads")
            d.write_conf(echo={"prefix": f"g{gen}: "})
            start = len(d.notify.messages)
            t0 = time.monotonic()
            if gen % 2 == 0:
                d.signal(signal.SIGHUP)
            else:
                r = reload_helper(d)
                assert r.returncode == 0, r.stderr
                assert r.stdout.strip() == f"reloaded: generation {gen}, 2 workers"
            i = wait_ready_after(d, start)
            times.append(time.monotonic() - t0)
            if first_retired is None:
                first_retired = time.monotonic()
            assert any(f"reloaded: generation {gen}, 2 workers" in m
                       for m in d.notify.messages[start:i + 2]), d.notify.messages[start:]
            # every connection made after READY=1 gets the new file
            for _ in range(3):
                got = echo_once(d)
                if got != f"g{gen}: x":
                    stale.append((gen, got))
            # the session from before keeps its worker and its prefix
            if time.monotonic() - first_retired < shutdown_timeout - 0.5:
                assert old.ask(f"keep {gen}") == f"Echo: keep {gen}"
        n = ok_count()
        wait_until(lambda: ok_count() >= n + 30, 10, "load after the reloads")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    with capsys.disabled():
        print("\n[reload under load] reload times (signal/helper -> READY=1): "
              + ", ".join(f"{t * 1000:.1f} ms" for t in times)
              + f"; max {max(times) * 1000:.1f} ms; connections ok {counts['ok']}, "
              f"failed {counts['failed']}; old-config answers after READY=1: {len(stale)}")
    assert counts["failed"] == 0, failures
    assert stale == [], "connections made after READY=1 served by the old generation"
    assert counts["ok"] >= 150
    # the first generation ends that session once its shutdown_timeout passed
    line = old.line(timeout=shutdown_timeout + 3)
    ended = time.monotonic() - first_retired
    assert line == RELOAD_LINE
    assert old.eof()
    assert shutdown_timeout - 0.5 <= ended <= shutdown_timeout + 1.5, ended
    assert stats(d)["generation"] == "6"
    assert max(times) < 2.0


def run_reload_helper(d, env=None):
    """`forkd --reload` started in the background."""
    return subprocess.Popen([FORKD, "--reload", "-c", d.conf], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_reload_asked_during_a_reload_reports_its_own_file(forkd_factory, tmp_path):
    """Two `forkd --reload` in a row, the file broken between them: the second
    request arrives while the first reload is still under way, so it must wait
    for a reload that reads the file after it asked, and fail with that file."""
    d = reloadable(forkd_factory, tmp_path, worker_timeout=0)
    old = d.workers()
    # an old worker that cannot act on its SIGQUIT still counts as accepting:
    # the master holds the first reload open (up to 5 s) until it lets go
    os.kill(old[0], signal.SIGSTOP)
    try:
        d.write_conf(echo={"prefix": "g2: "})
        first = run_reload_helper(d)
        # the first reload has read the file once its new workers exist
        wait_until(lambda: len(set(d.workers()) - set(old)) == 2, 5,
                   "the new generation of the first reload")
        where = bad_file(d)
        second = run_reload_helper(d)
        wait_until(lambda: "reload requested while one is under way" in d.log(), 5,
                   "the second request to reach the master")
        assert first.poll() is None and second.poll() is None
    finally:
        os.kill(old[0], signal.SIGCONT)
    out, err = first.communicate(timeout=40)
    assert first.returncode == 0, err
    assert out.strip() == "reloaded: generation 2, 2 workers"
    out, err = second.communicate(timeout=40)
    assert second.returncode == 1, (out, err)
    assert f"forkd: reload failed: {where}" in err, err
    assert echo_once(d) == "g2: x"
    s = stats(d)
    assert s["generation"] == "2" and s["reloads"] == "1" and s["reload_failures"] == "1"


def runtime_dir_forkd(forkd_factory, tmp_path):
    """A forkd whose control socket is $RUNTIME_DIRECTORY/forkd.sock, as under
    systemd: the helper finds it without reading a socket path from the file."""
    rt = tmp_path / "run"
    rt.mkdir()
    d = forkd_factory([{"service": "echo"}, {"service": "stats"}],
                      env={"RUNTIME_DIRECTORY": str(rt)}, workers=2, threads=2,
                      shutdown_timeout=2)
    assert (rt / "forkd.sock").exists()
    return d


def sighup_refused(d, reason):
    """SIGHUP: RELOADING=1, then STATUS=reload failed naming reason, then
    READY=1 again (the running generation carries on)."""
    start = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    rl = d.notify.wait_for("RELOADING=1", start=start)
    st = d.notify.wait_for("STATUS=reload failed: ", start=rl)
    assert reason in d.notify.messages[st], d.notify.messages[st]
    d.notify.wait_for("READY=1", start=rl)


def check_refused_reload(d, reason):
    """SIGHUP and the helper both refuse the file and keep the old config."""
    workers = d.workers()
    sighup_refused(d, reason)
    assert echo_once(d) == "Echo: x"
    r = subprocess.run([FORKD, "--reload", "-c", d.conf], capture_output=True, text=True,
                       timeout=40, env=d.env)
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert f"forkd: reload failed: {reason}" in r.stderr, r.stderr
    assert echo_once(d) == "Echo: x"
    assert d.workers() == workers
    s = stats(d)
    assert s["generation"] == "1" and s["reload_failures"] == "2", s
    assert reason in d.log()


def test_reload_with_the_file_gone_keeps_serving(forkd_factory, tmp_path):
    d = runtime_dir_forkd(forkd_factory, tmp_path)
    os.rename(d.conf, d.conf + ".moved")
    check_refused_reload(d, f"{d.conf}: cannot open: No such file or directory")


def test_reload_with_a_binary_file_keeps_serving(forkd_factory, tmp_path):
    d = runtime_dir_forkd(forkd_factory, tmp_path)
    with open(d.conf, "wb") as f:
        f.write(bytes(range(256)) * 4)
    check_refused_reload(d, f"{d.conf}: contains a NUL byte at offset 0: not a text file")


def answers_at(path):
    """True when something accepts connections on the unix socket at path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    finally:
        s.close()


def test_reload_moves_the_control_socket(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    old_path, new_path = tmp_path / "ctl.sock", tmp_path / "ctl-new.sock"
    assert answers_at(old_path)
    d.write_conf(control_socket=str(new_path), echo={"prefix": "moved: "})
    # the helper reads the new path, where nothing answers yet: it says why
    # and what to do, and the daemon is untouched
    r = reload_helper(d)
    assert r.returncode == 1
    assert f"cannot reach the running forkd at {new_path}" in r.stderr, r.stderr
    assert "send it SIGHUP" in r.stderr, r.stderr
    assert echo_once(d) == "Echo: x"
    # SIGHUP applies the file, the control socket included
    start = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    rl = d.notify.wait_for("RELOADING=1", start=start)
    d.notify.wait_for("READY=1", start=rl + 1)
    st = d.notify.wait_for("STATUS=reloaded: generation 2", start=rl + 1)
    assert echo_once(d) == "moved: x"
    assert answers_at(new_path)
    assert not answers_at(old_path) and not old_path.exists()
    assert f"control socket moved from {old_path} to {new_path}" in d.log()
    # from now on the helper, reading the same file, reaches the daemon
    d.write_conf(control_socket=str(new_path), echo={"prefix": "g3: "})
    r = reload_helper(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reloaded: generation 3, 2 workers"
    assert echo_once(d) == "g3: x"
    assert st > rl


def test_reload_to_an_unusable_control_socket_changes_nothing(forkd_factory, tmp_path):
    d = reloadable(forkd_factory, tmp_path)
    old_path = tmp_path / "ctl.sock"
    bad = tmp_path / "no-such-dir" / "ctl.sock"
    calc_port = free_port()
    d.write_conf(listeners=d.listeners + [{"address": "127.0.0.1", "port": calc_port,
                                           "service": "calc"}],
                 control_socket=str(bad), echo={"prefix": "bad: "})
    workers = d.workers()
    sighup_refused(d, f"{d.conf}: cannot open the control socket {bad}: "
                      "No such file or directory")
    assert echo_once(d) == "Echo: x"
    assert d.workers() == workers
    # the listener that reload had opened is closed again
    assert refused(calc_port)
    # the old control socket still answers: fix the file and reload through it
    d.write_conf(echo={"prefix": "fixed: "})
    r = reload_helper(d)
    assert r.returncode == 0, r.stderr
    assert echo_once(d) == "fixed: x"
    assert answers_at(old_path)
