"""Socket activation: listening sockets handed over as fd 3 onwards, the way
systemd does it (LISTEN_FDS, LISTEN_PID)."""
import os
import signal
import socket
import subprocess
import time

from conftest import FORKD, Client, free_port, wait_until, socket_inodes


def listening_socket():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def start_activated(d, sock, listen_pid="$$", wait=True):
    """Start forkd with sock as fd 3, LISTEN_FDS=1 and LISTEN_PID (the shell's
    $$ is the pid forkd will have, since the shell execs it)."""
    fd = sock.fileno()

    def to_fd3():
        os.dup2(fd, 3)   # dup2 leaves the copy inheritable
    d.logf = open(d.log_path, "ab")
    d.proc = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID={listen_pid}; LISTEN_FDS=1; '
         'export LISTEN_PID LISTEN_FDS; exec "$0" -c "$1"', FORKD, d.conf],
        env=d.env, stdout=d.logf, stderr=subprocess.STDOUT, pass_fds=(3,),
        preexec_fn=to_fd3)
    if wait:
        d.notify.wait_for("READY=1", timeout=10)
    return d


def thread_waits(d):
    out = {}
    for w in d.workers():
        for t in os.listdir(f"/proc/{w}/task"):
            with open(f"/proc/{w}/task/{t}/wchan") as f:
                out[f"{w}/{t}"] = f.read()
    return out


def listening_inodes(port):
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        return [int(l.split()[9]) for l in f
                if l.split()[1] == want and l.split()[3] == "0A"]


def test_serves_on_the_passed_socket_and_opens_the_others(forkd_factory):
    sock = listening_socket()
    port = sock.getsockname()[1]
    ino = os.fstat(sock.fileno()).st_ino
    stats_port = free_port()
    d = forkd_factory([{"service": "echo", "port": port},
                       {"service": "stats", "port": stats_port}],
                      start=False, workers=2, threads=2, shutdown_timeout=2)
    start_activated(d, sock)
    # the passed socket is the one in use: the master holds it as fd 3 ...
    assert socket_inodes(d.pid).get(3) == ino
    # ... the workers accept on it, and nothing else listens on that port
    for w in d.workers():
        assert ino in socket_inodes(w).values()
    assert listening_inodes(port) == [ino]
    # the other listener was opened by forkd itself
    stats_inodes = listening_inodes(stats_port)
    assert len(stats_inodes) == 1 and stats_inodes[0] != ino
    assert stats_inodes[0] in socket_inodes(d.pid).values()
    # our copy is closed: only forkd holds it now, and it serves
    sock.close()
    for i in range(5):
        c = Client(port)
        assert c.ask(f"a{i}") == f"Echo: a{i}"
        c.close()
    # systemd hands sockets over in blocking mode, as this one is
    c = Client(stats_port)
    c.send("stats\n")
    try:
        first = c.line(timeout=3)
    except socket.timeout:
        raise AssertionError(
            "the listener forkd opened itself is not served while the passed (blocking) "
            "socket is in use; worker threads wait in: " + str(thread_waits(d)))
    assert first == f"STAT pid {d.pid}"
    assert c.lines_until("END")[-1] == "END"
    c.close()
    assert f"listening on 127.0.0.1:{port} (echo)" in d.log()
    # with no client left, SIGTERM stops everything at once
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 1.5
    assert "was killed" not in d.log()


def test_passed_socket_for_another_pid_is_not_taken(forkd_factory):
    """LISTEN_PID names another process: the fds are not ours, so forkd binds
    the port itself, which the passed socket still holds."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    d = forkd_factory([{"service": "echo", "port": port}], start=False, workers=1)
    start_activated(d, sock, listen_pid="1", wait=False)
    assert d.proc.wait(timeout=10) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in d.log()
    sock.close()


def test_passed_socket_matching_no_listener_is_an_error(forkd_factory):
    sock = listening_socket()
    port = sock.getsockname()[1]
    d = forkd_factory([{"service": "echo"}], start=False, workers=1)
    start_activated(d, sock, wait=False)
    assert d.proc.wait(timeout=10) == 1
    log = d.log()
    assert f"socket passed by systemd (fd 3, 127.0.0.1:{port}) matches no listener" in log, log
    d.notify.poll()     # read what it sent before it exited
    assert "READY=1" not in "".join(d.notify.messages)
    # nothing was started, and the port forkd would have used stays free
    assert d.workers() == []
    wait_until(lambda: listening_inodes(d.port) == [], 2, "no listener on the echo port")
    sock.close()
