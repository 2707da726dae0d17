"""Chat across hosts: several forkd daemons sharing rooms through a real
redis-server (Debian's), started here on a free port and stopped by PID."""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import Client, free_port, wait_until, IS_ROOT
from test_chat import member, until, ask, who, rooms

REDIS = shutil.which("redis-server")
LEASE = 2
DOWN = re.compile(r"\* other hosts are out of reach.*not be replayed")
BACK = re.compile(r"\* other hosts are in reach again.*not delivered")

pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (Debian: apt install "
    "redis-server): the Redis channel layer is NOT tested")


class Redis:
    """A redis-server of our own; restartable on the same port."""

    def __init__(self, tmp_path, port=None, bind="127.0.0.1", args=(), prefix_cmd=()):
        self.dir = tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.bind = bind
        self.args = list(args)
        self.prefix_cmd = list(prefix_cmd)
        self.proc = None

    def start(self):
        self.log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            self.prefix_cmd + [REDIS, "--port", str(self.port), "--bind", *self.bind.split(),
                               "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            + self.args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: b"Ready to accept connections" in
                   (self.dir / "redis.log").read_bytes(), 10, "redis-server to start")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path).start()
    yield r
    r.stop()


def host(forkd_factory, redis_port, start=True, address=None, **chat):
    """One forkd as one host: chat and stats listeners, chat over Redis."""
    conf = {"layer": "redis", "redis_address": address or f"127.0.0.1:{redis_port}",
            "presence_lease": LEASE, "redis_timeout": 1000}
    conf.update(chat)
    return forkd_factory([{"service": "chat"}, {"service": "stats"}], start=start,
                         workers=2, threads=4, chat=conf)


def stats(d, sock=None):
    c = sock or d.client("stats")
    c.send("stats\n")
    out = {}
    for l in c.lines_until("END"):
        if l.startswith("STAT "):
            _, k, v = l.split(" ", 2)
            out[k] = v
    if sock is None:
        c.close()
    return out


def linked(*hosts, state="up"):
    for d in hosts:
        wait_until(lambda: stats(d)["chat_redis_link"] == state, 10,
                   f"the chat link of {d.conf} to be {state}")


def test_cross_host_lines_both_ways_in_order_once(forkd_factory, redis):
    a, b = host(forkd_factory, redis.port), host(forkd_factory, redis.port)
    linked(a, b)
    alice, carol = member(a, "alice"), member(a, "carol")
    bob = member(b, "bob")
    n = 300
    for i in range(n):
        alice.send(f"a{i}\n")
        bob.send(f"b{i}\n")

    def said(c, who_, prefix):
        got = []
        while len(got) < n:
            l = c.line()
            assert l is not None
            if l.startswith(f"[{who_}] "):
                got.append(l.split(" ", 1)[1])
        return got
    want_a = [f"a{i}" for i in range(n)]
    want_b = [f"b{i}" for i in range(n)]
    # each line once, in the sender's order, whatever host holds the reader
    assert said(bob, "alice", "a") == want_a
    assert said(alice, "bob", "b") == want_b
    # carol is on alice's host: she has alice's lines once, not twice
    got_c = []
    carol.send("/who\n")
    while True:
        l = carol.line()
        if l.startswith("* lobby ("):
            break
        if l.startswith("[alice] "):
            got_c.append(l[8:])
    assert got_c == want_a
    assert set(l.split(": ", 1)[1].split(", ")) == {"alice", "bob", "carol"}
    s = stats(a)
    assert int(s["chat_redis_published"]) >= n
    assert int(s["chat_redis_received"]) >= n


def test_presence_spans_three_hosts(forkd_factory, redis):
    hs = [host(forkd_factory, redis.port, max_members=3) for _ in range(3)]
    linked(*hs)
    m0 = member(hs[0], "n0")
    m1 = member(hs[1], "n1")
    m2 = member(hs[2], "n2")
    assert who(m0)[2] == {"n0", "n1", "n2"}
    assert who(m2)[2] == {"n0", "n1", "n2"}
    assert ask(m1, "/join dev") == "* you joined dev"
    assert rooms(m2) == {"lobby": 2, "dev": 1}
    # max_members counts every host's members: lobby holds 2, one more fits
    m3 = member(hs[1], "n3")
    assert who(m3)[2] == {"n0", "n2", "n3"}
    c = hs[2].client("chat")
    greeting = c.line()
    assert "in no room" in greeting and "that room is full" in greeting, greeting
    # a nick is unique in a room across hosts
    assert ask(m2, "/join dev") == "* you joined dev"
    assert ask(m0, "/nick n2") == "* you are now n2"   # n2 left the lobby
    reply = ask(m3, "/nick n2")
    assert reply.startswith("ERR nick 'n2' is taken in lobby"), reply


def test_two_hosts_race_for_one_nick(forkd_factory, redis):
    a, b = host(forkd_factory, redis.port), host(forkd_factory, redis.port)
    linked(a, b)
    kept = []
    for round_ in range(10):
        x, y = member(a), member(b)
        kept += [x, y]
        nick = f"race{round_}"
        go = threading.Barrier(2)

        def claim(c, out):
            go.wait()
            c.send(f"/nick {nick}\n")
            while True:
                l = c.line()
                if l.startswith("* you are now") or l.startswith("ERR"):
                    out.append(l)
                    return
        rx, ry = [], []
        ts = [threading.Thread(target=claim, args=(x, rx)),
              threading.Thread(target=claim, args=(y, ry))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wins = [r for r in rx + ry if r == f"* you are now {nick}"]
        assert len(wins) == 1, (rx, ry)
        assert [r for r in rx + ry if r.startswith(f"ERR nick '{nick}' is taken")], (rx, ry)
        names = who(x)[2]
        assert nick in names and len(names) == 2 * (round_ + 1), names
        # every guest number is unique across the hosts, too
        assert len(names) == len(set(names))


def kill_host(d):
    pids = [d.pid] + d.workers()
    for p in pids:
        os.kill(p, signal.SIGKILL)
    d.proc.wait()
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}/stat") and
                               open(f"/proc/{p}/stat").read().split()[2] != "Z"
                               for p in pids), 5, "the host's processes to die")


def test_a_killed_host_leaves_no_ghosts(forkd_factory, redis):
    a, b = host(forkd_factory, redis.port), host(forkd_factory, redis.port)
    linked(a, b)
    alice = member(a, "alice")
    ghosts = [member(b, f"ghost{i}") for i in range(4)]
    assert ask(ghosts[0], "/join attic") == "* you joined attic"
    assert who(alice)[2] == {"alice", "ghost1", "ghost2", "ghost3"}
    assert rooms(alice) == {"lobby": 4, "attic": 1}
    kill_host(b)
    killed = time.monotonic()
    # gone within the lease (plus a refresh period of slack for the clock)
    wait_until(lambda: who(alice)[2] == {"alice"}, LEASE + 3, "ghosts to go")
    assert rooms(alice) == {"lobby": 1}
    print(f"members of the killed host gone after {time.monotonic() - killed:.2f}s "
          f"(lease {LEASE}s)")


def read_until_match(c, pattern, timeout=10):
    before = []
    while True:
        l = c.line(timeout)
        assert l is not None, f"EOF waiting for {pattern.pattern}; got {before}"
        if pattern.fullmatch(l):
            return before
        before.append(l)


def test_redis_killed_and_restarted_under_traffic(forkd_factory, redis):
    a, b = host(forkd_factory, redis.port), host(forkd_factory, redis.port)
    linked(a, b)
    alice, carol = member(a, "alice"), member(a, "carol")
    bob = member(b, "bob")
    stop = threading.Event()

    def chatter():
        i = 0
        while not stop.is_set():
            try:
                bob.send(f"traffic {i}\n")
            except OSError:
                return
            i += 1
            stop.wait(0.005)
    t = threading.Thread(target=chatter)
    t.start()
    try:
        wait_until(lambda: alice.line().startswith("[bob] traffic"), 5, "traffic")
        redis.kill()
        # every member is told, on both hosts; the link is down in stats
        read_until_match(alice, DOWN)
        read_until_match(bob, DOWN)
        linked(a, b, state="down")
        wait_until(lambda: "Redis cannot be reached" in a.log(), 5, "the warning")
        a.notify.wait_for("chat link to other hosts down")
        # this host's members chat on
        alice.send("local only\n")
        read_until_match(carol, re.compile(r"\[alice\] local only"))
        redis.start()
        read_until_match(alice, BACK)
        read_until_match(bob, BACK)
        linked(a, b)
    finally:
        stop.set()
        t.join()
    # cross-host chat is back without restarting forkd, and the restarted
    # Redis knows every member again
    bob.send("after\n")
    read_until_match(alice, re.compile(r"\[bob\] after"))
    alice.send("and back\n")
    read_until_match(bob, re.compile(r"\[alice\] and back"))
    wait_until(lambda: who(alice)[2] == {"alice", "bob", "carol"}, 5, "presence again")
    assert a.log().count("Redis cannot be reached") == 1


def test_redis_absent_at_start(forkd_factory, tmp_path):
    r = Redis(tmp_path)          # a free port with nothing listening yet
    a = host(forkd_factory, r.port)   # start() waits for READY=1
    a.notify.wait_for("chat link to other hosts down")
    assert stats(a)["chat_redis_link"] == "down"
    x, y = member(a, "x"), member(a, "y")
    x.send("hello\n")
    until(y, "[x] hello")
    assert who(x)[2] == {"x", "y"}
    wait_until(lambda: "Redis cannot be reached" in a.log(), 5, "the warning")
    r.start()
    try:
        linked(a)
        read_until_match(x, re.compile(r"\* other hosts are in reach now: rooms span them"))
        b = host(forkd_factory, r.port)
        linked(b)
        z = member(b, "z")
        assert who(z)[2] == {"x", "y", "z"}
        assert a.log().count("Redis cannot be reached") == 1
    finally:
        r.stop()


def test_password_file_and_credentials_directory(forkd_factory, tmp_path):
    r = Redis(tmp_path, args=["--requirepass", "s3cret"]).start()
    try:
        pw = tmp_path / "pw"
        pw.write_text("s3cret\n")
        pw.chmod(0o600)
        a = host(forkd_factory, r.port, redis_password_file=str(pw))
        linked(a)
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "redis").write_text("s3cret")
        b = forkd_factory([{"service": "chat"}, {"service": "stats"}], start=False,
                          workers=1, chat={"layer": "redis", "presence_lease": LEASE,
                                           "redis_address": f"127.0.0.1:{r.port}",
                                           "redis_password_file": "%d/redis"})
        b.env["CREDENTIALS_DIRECTORY"] = str(creds)
        b.start()
        linked(b)
        x, y = member(a, "x"), member(b, "y")
        assert who(x)[2] == {"x", "y"}
        # a wrong password is a link that stays down, never a dead daemon
        (tmp_path / "bad").write_text("nope")
        c = host(forkd_factory, r.port, redis_password_file=str(tmp_path / "bad"))
        linked(c, state="down")
        # a file that cannot be read stops the start with the reason
        d = host(forkd_factory, r.port, start=False,
                 redis_password_file=str(tmp_path / "missing"))
        d.start(wait=False)
        assert d.wait() != 0
        assert "chat.redis_password_file: cannot open" in d.log()
    finally:
        r.stop()


@pytest.mark.parametrize("key,value,msg", [
    ("layer", "memcache", "'chat.layer' must be one of local, redis (got 'memcache')"),
    ("redis_address", "localhost:99999", "the port must be a number from 1 to 65535"),
    ("redis_address", "unix:relative.sock", "a unix socket must be an absolute path"),
    ("redis_address", "::1:6379", "an IPv6 address goes in brackets"),
    ("redis_prefix", "a b", "'chat.redis_prefix' must be 1-64 letters"),
    ("presence_lease", 0, "'chat.presence_lease' must be between 1 and 3600"),
    ("redis_queue", "10", "'chat.redis_queue' must be an integer"),
])
def test_config_errors_name_the_line(tmp_path, key, value, msg):
    from conftest import conf_text, FORKD
    conf = tmp_path / "f.conf"
    setting = f'{key} = "{value}";' if isinstance(value, str) else f"{key} = {value};"
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": 5999, "service": "chat"}])
                    + "chat = {\n  max_rooms = 10;\n  " + setting + "\n};\n")
    p = subprocess.run([FORKD, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 1
    lines = conf.read_text().splitlines()
    lineno = next(i + 1 for i, l in enumerate(lines) if l.strip().startswith(key))
    assert f"{conf}:{lineno}: " in p.stderr, p.stderr
    assert msg in p.stderr, p.stderr


# ---- hosts in network namespaces of their own ----

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name):
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class NsClient(Client):
    """A Client whose socket lives in a network namespace (made on a thread
    that entered it; the socket stays there whichever thread uses it)."""

    def __init__(self, ns, port, host="127.0.0.1", timeout=5.0):
        box = {}

        def make():
            try:
                enter_netns(ns)
                box["s"] = socket.create_connection((host, port), timeout)
            except OSError as e:
                box["e"] = e
        t = threading.Thread(target=make)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        self.sock = box["s"]
        self.sock.settimeout(timeout)
        self.buf = b""


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def netns(tmp_path):
    """Three namespaces: r (Redis) linked to a and b by veth pairs,
    10.231.1.0/24 and 10.231.2.0/24, inside those namespaces only."""
    if not IS_ROOT:
        pytest.skip("network namespaces need root: the several-hosts-in-namespaces "
                    "test is NOT run")
    tag = f"fk{os.getpid() % 100000}"
    names = {k: f"{tag}{k}" for k in ("r", "a", "b")}
    made = []
    try:
        for ns in names.values():
            p = ip("netns", "add", ns)
            if p.returncode != 0:
                pytest.skip(f"ip netns add failed ({p.stderr.strip()}): the "
                            "namespaces test is NOT run")
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for i, h in ((1, "a"), (2, "b")):
            va, vr = f"{tag}{h}0", f"{tag}{h}1"
            steps = [
                ("link", "add", va, "netns", names[h], "type", "veth", "peer", "name", vr,
                 "netns", names["r"]),
                ("-n", names[h], "addr", "add", f"10.231.{i}.2/24", "dev", va),
                ("-n", names["r"], "addr", "add", f"10.231.{i}.1/24", "dev", vr),
                ("-n", names[h], "link", "set", va, "up"),
                ("-n", names["r"], "link", "set", vr, "up"),
            ]
            for s in steps:
                p = ip(*s)
                if p.returncode != 0:
                    pytest.skip(f"ip {' '.join(s)} failed ({p.stderr.strip()}): the "
                                "namespaces test is NOT run")
        yield names
    finally:
        for ns in made:
            ip("netns", "del", ns)


def test_hosts_in_network_namespaces(forkd_factory, tmp_path, netns):
    # protected mode answers DENIED to any address but loopback; these
    # addresses exist only inside the test's namespaces
    r = Redis(tmp_path, bind="10.231.1.1 10.231.2.1", args=["--protected-mode", "no"],
              prefix_cmd=["ip", "netns", "exec", netns["r"]]).start()
    hs = {}
    try:
        for i, h in ((1, "a"), (2, "b")):
            d = host(forkd_factory, None, start=False,
                     address=f"10.231.{i}.1:{r.port}")
            d.start(preexec_fn=lambda ns=netns[h]: enter_netns(ns))
            hs[h] = d

        def ns_stats(h):
            c = NsClient(netns[h], hs[h].ports["stats"])
            try:
                return stats(hs[h], sock=c)
            finally:
                c.close()
        for h in hs:
            wait_until(lambda: ns_stats(h)["chat_redis_link"] == "up", 10, f"{h} linked")
        alice = member(None, "alice", sock=NsClient(netns["a"], hs["a"].ports["chat"]))
        bob = member(None, "bob", sock=NsClient(netns["b"], hs["b"].ports["chat"]))
        alice.send("over the wire\n")
        read_until_match(bob, re.compile(r"\[alice\] over the wire"))
        bob.send("and back\n")
        read_until_match(alice, re.compile(r"\[bob\] and back"))
        assert who(alice)[2] == {"alice", "bob"}
        # host b's cable is pulled: its members hear of it, chat on at home
        ip("-n", netns["b"], "link", "set", f"{netns['b'][:-1]}b0", "down")
        read_until_match(bob, DOWN, timeout=15)
        wait_until(lambda: who(alice)[2] == {"alice"}, LEASE + 10, "b's members to go")
        ip("-n", netns["b"], "link", "set", f"{netns['b'][:-1]}b0", "up")
        read_until_match(bob, BACK, timeout=15)
        wait_until(lambda: who(alice)[2] == {"alice", "bob"}, 10, "b's members back")
        alice.send("welcome back\n")
        read_until_match(bob, re.compile(r"\[alice\] welcome back"))
    finally:
        r.stop()


def test_reload_switches_the_layer(forkd_factory, redis):
    """A reload forks new workers, which read the new chat settings."""
    a = forkd_factory([{"service": "chat"}, {"service": "stats"}], workers=2, threads=4)
    assert stats(a)["chat_redis_link"] == "none"
    b = host(forkd_factory, redis.port)
    linked(b)
    start = len(a.notify.messages)
    a.write_conf(chat={"layer": "redis", "redis_address": f"127.0.0.1:{redis.port}",
                       "presence_lease": LEASE})
    a.signal(signal.SIGHUP)
    a.notify.wait_for("READY=1", start=a.notify.wait_for("RELOADING=1", start=start) + 1)
    linked(a)
    x, y = member(a, "x"), member(b, "y")
    assert who(x)[2] == {"x", "y"}
    y.send("across\n")
    until(x, "[y] across")
    # and a reload with a password file that cannot be read keeps them linked
    start = len(a.notify.messages)
    a.write_conf(chat={"layer": "redis", "redis_address": f"127.0.0.1:{redis.port}",
                       "redis_password_file": "/nonexistent/pw"})
    a.signal(signal.SIGHUP)
    a.notify.wait_for("STATUS=reload failed", start=start)
    assert "chat.redis_password_file: cannot open '/nonexistent/pw'" in a.log()
    y.send("still\n")
    until(x, "[y] still")


def test_a_slow_subscriber_cut_by_redis_links_up_again(forkd_factory, tmp_path):
    """Redis closes a subscriber that falls behind (client-output-buffer-limit
    pubsub): its host is told, as for any lost link, and links up again."""
    r = Redis(tmp_path, args=["--client-output-buffer-limit", "pubsub 64kb 32kb 1"]).start()
    try:
        a, b = host(forkd_factory, r.port), host(forkd_factory, r.port)
        linked(a, b)
        alice, bob = member(a, "alice"), member(b, "bob")
        # carol, on b, is in a quiet room: the notices are for her too
        carol = member(b, "carol")
        assert ask(carol, "/join quiet") == "* you joined quiet"
        # b's processes stop reading; a says far more than the limit and
        # than the sockets between them hold
        pids = [b.pid] + b.workers()
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        try:
            n = 4000
            alice.send("".join(f"flood {i} {'x' * 4000}\n" for i in range(n)))
            wait_until(lambda: int(stats(a)["chat_redis_published"]) >= n, 20,
                       "the flood to be published")
            wait_until(lambda: b"output buffer limits" in
                       (r.dir / "redis.log").read_bytes(), 10, "Redis to cut b")
        finally:
            for p in pids:
                os.kill(p, signal.SIGCONT)
        # (bob, who reads nothing, is dropped as too slow by his own host)
        read_until_match(carol, DOWN)
        read_until_match(carol, BACK)
        linked(a, b)
        alice.send("/join quiet\n")
        alice.send("after the cut\n")
        read_until_match(carol, re.compile(r"\[alice\] after the cut"))
    finally:
        r.stop()


def test_a_presence_call_waiting_on_redis_holds_no_pool_thread(forkd_factory, redis):
    """One worker with one pool thread; Redis stops answering (SIGSTOP) while
    a member asks /who.  The pool thread is not held: another member's line
    reaches the room at once.  The asker's answer comes once Redis answers,
    and what it sent after /who is answered after it, in order."""
    d = forkd_factory([{"service": "chat"}, {"service": "stats"}], workers=1, threads=1,
                      chat={"layer": "redis", "redis_address": f"127.0.0.1:{redis.port}",
                            "presence_lease": 30, "redis_timeout": 5000})
    linked(d)
    alice, bob, carol = member(d, "alice"), member(d, "bob"), member(d, "carol")
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        alice.send("/who\nhello after who\n")
        bob.send("hi from bob\n")
        # carol hears bob while alice's /who still waits for Redis
        until(carol, "[bob] hi from bob", timeout=4)
        alice.sock.setblocking(False)
        try:
            early = alice.sock.recv(4096)
        except BlockingIOError:
            early = b""
        alice.sock.setblocking(True)
        alice.buf += early
        assert b"* lobby (" not in alice.buf, \
            f"alice's /who was answered while Redis was stopped: {alice.buf!r}"
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    # the /who sent before the stop is answered now
    while True:
        l = alice.line()
        assert l is not None, "EOF before the /who answer"
        if l.startswith("* lobby ("):
            break
    assert l.startswith("* lobby (3): ") and \
        set(l.split(": ", 1)[1].split(", ")) == {"alice", "bob", "carol"}, l
    # the line alice sent after /who reached the room only after its answer
    until(carol, "[alice] hello after who")
    assert "chat_redis_link up" in "".join(f"{k} {v}\n" for k, v in stats(d).items())


def test_a_websocket_member_waiting_on_redis_holds_no_pool_thread(forkd_factory, redis):
    """The same over WebSocket: a browser's /who waits for a stopped Redis
    without holding the only pool thread, and its next message follows the
    answer.  A new browser's first room waits the same way."""
    websocket = pytest.importorskip(
        "websocket", reason="python3-websocket is not installed: NOT tested")
    import json
    d = forkd_factory([{"service": "chat", "protocol": "websocket"}, {"service": "chat"},
                       {"service": "stats"}], workers=1, threads=1,
                      chat={"layer": "redis", "redis_address": f"127.0.0.1:{redis.port}",
                            "presence_lease": 30, "redis_timeout": 5000})
    linked(d)
    ws_port, line_port = d.listeners[0]["port"], d.listeners[1]["port"]
    alice = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/lobby/", timeout=10)
    assert json.loads(alice.recv())["event"] == "welcome"
    alice.send('{"command": "nick", "arg": "alice"}')
    bob, carol = member(d, "bob", sock=Client(line_port)), member(d, "carol",
                                                                  sock=Client(line_port))
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        alice.send("/who")
        alice.send("hello after who")
        # a browser arriving now waits for its first room, holding nothing
        late = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/lobby/", timeout=10)
        bob.send("hi from bob\n")
        until(carol, "[bob] hi from bob", timeout=4)
        seen = []
        alice.settimeout(0.2)
        try:
            while True:
                seen.append(json.loads(alice.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        assert not any(o.get("event") == "who" for o in seen), seen
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    alice.settimeout(10)
    while True:
        o = json.loads(alice.recv())
        if o.get("event") == "who":
            break
    assert o["room"] == "lobby" and {"alice", "bob", "carol"} <= set(o["members"]), o
    until(carol, "[alice] hello after who")
    assert json.loads(late.recv())["event"] == "welcome"
    late.close()
    alice.close()
