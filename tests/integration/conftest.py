"""Harness for the integration tests: the real forkd binary on free ports,
a real NOTIFY_SOCKET, real TCP clients.  Nothing here is a mock."""
import os
import signal
import socket
import subprocess
import time

import pytest

FORKD = os.environ.get(
    "FORKD_BIN",
    os.path.join(os.path.dirname(__file__), "..", "..", "src", "forkd"))
IS_ROOT = os.geteuid() == 0


def wait_until(pred, timeout=5.0, what="condition", interval=0.01):
    """Poll pred() until it returns something true; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def conf_text(listeners, **settings):
    """listeners: list of dicts (address, port, service, ...); settings: top-level keys."""
    out = []
    if IS_ROOT:
        settings.setdefault("user", "nobody")
        settings.setdefault("group", "nogroup")
    groups = {k: settings.pop(k) for k in list(settings) if isinstance(settings[k], dict)}
    for k, v in settings.items():
        out.append(f"{k} = {fmt(v)};")
    items = []
    for l in listeners:
        items.append("{ " + " ".join(f"{k} = {fmt(v)};" for k, v in l.items()) + " }")
    out.append("listeners = (\n  " + ",\n  ".join(items) + "\n);")
    for name, g in groups.items():
        out.append(f"{name} = {{ " + " ".join(f"{k} = {fmt(v)};" for k, v in g.items()) + " };")
    return "\n".join(out) + "\n"


def fmt(v):
    """A Python value as libconfig text: dicts are groups, lists are lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + " ".join(f"{k} = {fmt(x)};" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(fmt(x) for x in v) + " ]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


class Notify:
    """A NOTIFY_SOCKET the way systemd has one: a unix datagram socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []

    def poll(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append(data.decode())

    def wait_for(self, needle, timeout=5.0, start=0):
        """Wait for a message containing needle; returns its index."""
        def seen():
            self.poll()
            for i in range(start, len(self.messages)):
                if needle in self.messages[i]:
                    return i + 1
            return 0
        return wait_until(seen, timeout, f"notify message {needle!r}") - 1

    def close(self):
        self.sock.close()


class Client:
    """A line client, like a person at telnet."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, source=None):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self, timeout=5.0):
        """The next reply line (CRLF checked and stripped), or None at EOF."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    rest, self.buf = self.buf, b""
                    return rest.decode(errors="replace")
                return None
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        assert raw.endswith(b"\r"), f"reply not CRLF-terminated: {raw!r}"
        return raw[:-1].decode(errors="replace")

    def ask(self, text, timeout=5.0):
        self.send(text + "\n")
        return self.line(timeout)

    def lines_until(self, last, timeout=5.0):
        out = []
        while True:
            l = self.line(timeout)
            assert l is not None, f"EOF before {last!r}; got {out}"
            out.append(l)
            if l == last:
                return out

    def eof(self, timeout=5.0):
        """True when the server closed the connection (after any pending lines)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def children(pid):
    """PIDs whose parent is pid, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError):
            pass
    return sorted(out)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def owner(d, c):
    """The pid of the worker holding client c's connection, from /proc."""
    lport = c.sock.getsockname()[1]
    sport = c.sock.getpeername()[1]

    def find():
        inode = None
        with open("/proc/net/tcp") as f:
            for row in f.read().splitlines()[1:]:
                col = row.split()
                if (int(col[1].split(":")[1], 16) == sport and
                        int(col[2].split(":")[1], 16) == lport and col[9] != "0"):
                    inode = col[9]
        if inode is None:
            return None
        for w in d.workers():
            try:
                for fd in os.listdir(f"/proc/{w}/fd"):
                    if os.readlink(f"/proc/{w}/fd/{fd}") == f"socket:[{inode}]":
                        return w
            except OSError:
                pass
        return None
    return wait_until(find, 5, f"the worker holding port {lport}")


def socket_inodes(pid):
    """Socket inodes open in a process, by fd."""
    out = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out[int(fd)] = int(link[8:-1])
    return out


class Forkd:
    def __init__(self, tmp_path, listeners=None, env=None, **settings):
        self.dir = tmp_path
        self.ports = {}
        if listeners is None:
            listeners = [{"service": "echo"}]
        self.listeners = []
        for l in listeners:
            l = dict(l)
            l.setdefault("address", "127.0.0.1")
            if "port" not in l:
                l["port"] = free_port(l["address"])
            self.ports.setdefault(l["service"], l["port"])
            self.listeners.append(l)
        self.settings = settings
        self.conf = str(tmp_path / "forkd.conf")
        self.write_conf()
        self.notify = Notify(str(tmp_path / "notify.sock"))
        self.log_path = str(tmp_path / "forkd.log")
        self.env = dict(os.environ)
        self.env["NOTIFY_SOCKET"] = self.notify.path
        self.env.pop("JOURNAL_STREAM", None)
        self.env.pop("LISTEN_FDS", None)
        self.env.pop("LISTEN_PID", None)
        if env:
            self.env.update(env)
        self.proc = None

    def write_conf(self, listeners=None, **settings):
        s = dict(self.settings)
        s.update(settings)
        with open(self.conf, "w") as f:
            f.write(conf_text(listeners or self.listeners, **s))

    @property
    def port(self):
        return self.listeners[0]["port"]

    def start(self, wait=True, pass_fds=(), preexec_fn=None):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [FORKD, "-c", self.conf], env=self.env, stdout=self.logf,
            stderr=subprocess.STDOUT, pass_fds=pass_fds, preexec_fn=preexec_fn)
        if wait:
            self.notify.wait_for("READY=1", timeout=10)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def workers(self):
        return [p for p in children(self.pid) if alive(p)]

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def client(self, service=None, **kw):
        port = self.ports[service] if service else self.port
        return Client(port, **kw)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout=15):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            workers = self.workers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for w in workers:
                if alive(w):
                    os.kill(w, signal.SIGKILL)
        self.notify.close()
        if self.proc:
            self.logf.close()


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def sanitizer_reports(text):
    return [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKS)]


@pytest.fixture
def forkd_factory(tmp_path):
    made = []

    def make(listeners=None, start=True, **settings):
        sub = tmp_path / f"d{len(made)}"
        sub.mkdir()
        d = Forkd(sub, listeners, **settings)
        made.append(d)
        if start:
            d.start()
        return d
    yield make
    reports = []
    for d in made:
        d.stop()
        if d.proc:
            reports += sanitizer_reports(d.log())
    # a sanitizer report from any forkd process fails the test that caused it
    assert not reports, "sanitizer reports:\n" + "\n".join(reports[:20])


@pytest.fixture
def forkd(forkd_factory):
    """One forkd with an echo listener, 2 workers × 4 threads."""
    return forkd_factory(workers=2, threads=4)
