"""The metrics service: Prometheus' text format over HTTP, read by Prometheus'
own parser (python3-prometheus-client) and linter (promtool), and counters
that move with what clients do."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import FORKD, wait_until

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the suite's deps install it
    text_string_to_metric_families = None

CTYPE = "text/plain; version=0.0.4; charset=utf-8"


def need_parser():
    if text_string_to_metric_families is None:
        pytest.skip("python3-prometheus-client is not installed: cannot parse metrics")


def scrape_raw(port, path="/metrics", method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def samples(text):
    """{(name, frozenset(labels)): value} through Prometheus' parser."""
    need_parser()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def scrape(port):
    status, headers, body = scrape_raw(port)
    assert status == 200, body
    return samples(body)


def value(m, name, **labels):
    want = {k: str(v) for k, v in labels.items()}
    found = [v for (n, ls), v in m.items() if n == name and want.items() <= dict(ls).items()]
    assert found, f"no series {name}{labels} in {sorted(k[0] for k in m)}"
    return sum(found)


def metrics_forkd(factory, extra=(), **settings):
    listeners = [{"service": "metrics"}] + list(extra)
    settings.setdefault("workers", 2)
    settings.setdefault("threads", 4)
    return factory(listeners, **settings)


class Http:
    """A raw HTTP/1.1 client over one TCP connection."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def response(self, head_only=False):
        """(status, headers, body) of the next response."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body.decode()

    def closed(self, timeout=5):
        """True once the server closed the connection."""
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


# ---- the format ----

def test_exposition_format_parses_with_help_and_type(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "echo"}, {"service": "chat"}])
    status, headers, body = scrape_raw(d.ports["metrics"])
    assert status == 200
    assert headers["Content-Type"] == CTYPE
    m = samples(body)

    # every family has exactly one HELP and one TYPE, before its samples
    helps, types, seen = {}, {}, set()
    for line in body.splitlines():
        assert line == line.strip() and line, f"stray line {line!r}"
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helps, f"two HELP lines for {name}"
            helps[name] = line
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            assert name not in types, f"two TYPE lines for {name}"
            assert typ in ("counter", "gauge")
            types[name] = typ
        else:
            name = line.split("{")[0].split()[0]
            assert name in types and name in helps, f"{name} has no HELP/TYPE before it"
            seen.add(name)
            assert name.startswith("forkd_")
            assert name.endswith("_total") == (types[name] == "counter"), name
    assert seen == set(types) == set(helps)

    # the families a user dashboards on, with their labels
    port = d.ports["echo"]
    for name in ("forkd_connections_open", "forkd_connections_accepted_total",
                 "forkd_requests_total", "forkd_received_bytes_total",
                 "forkd_sent_bytes_total"):
        value(m, name, listener=f"127.0.0.1:{port}", service="echo", protocol="line")
        value(m, name, listener=f"127.0.0.1:{d.ports['metrics']}", service="metrics",
              protocol="http")
    for reason in ("max_connections", "per_ip", "emfile"):
        value(m, "forkd_connections_refused_total", reason=reason)
    for reason in ("idle", "too_slow", "send_timeout", "shutdown", "reload", "protocol",
                   "client"):
        value(m, "forkd_connections_closed_total", reason=reason)
    for cause in ("crash", "hung", "recycled"):
        value(m, "forkd_worker_restarts_total", cause=cause)
    for result in ("success", "failure"):
        value(m, "forkd_reloads_total", result=result)
    assert value(m, "forkd_workers_wanted") == 2
    assert value(m, "forkd_workers_ready") == 2
    builds = [dict(ls) for (n, ls) in m if n == "forkd_build_info"]
    assert len(builds) == 1 and builds[0]["version"]
    assert value(m, "forkd_build_info") == 1
    assert abs(value(m, "forkd_process_start_time_seconds") - time.time()) < 60
    assert value(m, "forkd_process_resident_memory_bytes") > 1 << 20
    # master + 2 workers: at least their listeners, epoll and std streams
    assert value(m, "forkd_process_open_fds") >= 3 * 4
    assert value(m, "forkd_process_cpu_seconds_total") > 0
    for name in ("forkd_chat_rooms", "forkd_chat_members",
                 "forkd_chat_messages_delivered_total", "forkd_chat_messages_dropped_total"):
        value(m, name)


def test_promtool_finds_nothing_to_lint(forkd_factory, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    d = metrics_forkd(forkd_factory, [{"service": "echo"}])
    _, _, body = scrape_raw(d.ports["metrics"])
    r = subprocess.run([promtool, "check", "metrics"], input=body.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        (r.stdout + r.stderr).decode()


def test_head_other_paths_and_methods(forkd_factory):
    d = metrics_forkd(forkd_factory)
    port = d.ports["metrics"]
    status, headers, body = scrape_raw(port, method="HEAD")
    assert status == 200 and body == "" and headers["Content-Type"] == CTYPE
    assert int(headers["Content-Length"]) > 1000
    assert scrape_raw(port, "/")[0] == 404
    assert scrape_raw(port, "/metrics/x")[0] == 404
    status, headers, _ = scrape_raw(port, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert scrape_raw(port, "/metrics?name[]=x")[0] == 200


def test_keep_alive_serves_many_scrapes_on_one_connection(forkd_factory):
    d = metrics_forkd(forkd_factory)
    conn = http.client.HTTPConnection("127.0.0.1", d.ports["metrics"], timeout=5)
    for _ in range(5):
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and not r.will_close
        r.read()
    conn.close()
    m = scrape(d.ports["metrics"])
    lbl = {"listener": f"127.0.0.1:{d.ports['metrics']}"}
    # five on the first connection, this one on the second; a request is
    # counted once answered, so this scrape does not see itself
    assert value(m, "forkd_connections_accepted_total", **lbl) == 2
    assert value(m, "forkd_requests_total", **lbl) == 5


def test_line_protocol_is_refused_for_metrics(forkd_factory):
    d = forkd_factory([{"service": "metrics", "protocol": "line"}], start=False)
    r = subprocess.run([FORKD, "-t", "-c", d.conf], capture_output=True, timeout=10)
    assert r.returncode != 0
    assert b"http" in r.stdout + r.stderr


# ---- counters move ----

def test_ten_echo_requests_count_ten(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "echo"}])
    lbl = {"listener": f"127.0.0.1:{d.ports['echo']}", "service": "echo"}
    before = scrape(d.ports["metrics"])
    c = d.client("echo")
    for i in range(10):
        assert c.ask(f"hello {i}") == f"Echo: hello {i}"
    after = scrape(d.ports["metrics"])
    assert value(after, "forkd_requests_total", **lbl) - \
        value(before, "forkd_requests_total", **lbl) == 10
    assert value(after, "forkd_connections_accepted_total", **lbl) - \
        value(before, "forkd_connections_accepted_total", **lbl) == 1
    assert value(after, "forkd_connections_open", **lbl) == 1
    sent = sum(len(f"hello {i}\n") for i in range(10))
    got = sum(len(f"Echo: hello {i}\r\n") for i in range(10))
    assert value(after, "forkd_received_bytes_total", **lbl) - \
        value(before, "forkd_received_bytes_total", **lbl) == sent
    assert value(after, "forkd_sent_bytes_total", **lbl) - \
        value(before, "forkd_sent_bytes_total", **lbl) == got
    c.close()
    wait_until(lambda: value(scrape(d.ports["metrics"]), "forkd_connections_open", **lbl) == 0,
               what="the closed connection to leave the gauge")
    closed = value(scrape(d.ports["metrics"]), "forkd_connections_closed_total", reason="client")
    assert closed >= 1


def test_idle_timeout_is_counted_as_idle(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "echo", "idle_timeout": 1}])
    before = value(scrape(d.ports["metrics"]), "forkd_connections_closed_total", reason="idle")
    c = d.client("echo")
    assert c.line(timeout=5) == "ERR idle timeout"
    assert c.eof()
    wait_until(lambda: value(scrape(d.ports["metrics"]), "forkd_connections_closed_total",
                             reason="idle") == before + 1, what="the idle close counted")


def test_reloads_count_success_and_failure(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "echo"}])
    port = d.ports["metrics"]

    def reloads(result):
        return value(scrape(port), "forkd_reloads_total", result=result)

    assert reloads("success") == 0 and reloads("failure") == 0
    d.signal(signal.SIGHUP)
    wait_until(lambda: reloads("success") == 1, 10, "the reload counted")
    with open(d.conf, "a") as f:
        f.write("no_such_key = 1;\n")
    d.signal(signal.SIGHUP)
    wait_until(lambda: reloads("failure") == 1, 10, "the failed reload counted")
    assert reloads("success") == 1
    # the counters of the first generation's workers were kept
    assert value(scrape(port), "forkd_connections_accepted_total",
                 listener=f"127.0.0.1:{port}") >= 4


def test_counters_survive_a_worker_crash(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "echo"}], workers=1)
    lbl = {"listener": f"127.0.0.1:{d.ports['echo']}"}
    c = d.client("echo")
    for i in range(5):
        c.ask("x")
    c.close()
    before = scrape(d.ports["metrics"])
    (w,) = d.workers()
    os.kill(w, signal.SIGKILL)
    wait_until(lambda: value(scrape(d.ports["metrics"]), "forkd_worker_restarts_total",
                             cause="crash") == 1, 10, "the crash counted")
    after = scrape(d.ports["metrics"])
    assert value(after, "forkd_requests_total", **lbl) == \
        value(before, "forkd_requests_total", **lbl)
    assert value(after, "forkd_process_cpu_seconds_total") >= \
        value(before, "forkd_process_cpu_seconds_total")


def test_chat_rooms_members_and_messages(forkd_factory):
    d = metrics_forkd(forkd_factory, [{"service": "chat"}])
    port = d.ports["metrics"]
    a, b = d.client("chat"), d.client("chat")
    a.ask("/nick ann")
    b.ask("/nick bob")
    wait_until(lambda: value(scrape(port), "forkd_chat_members") == 2, what="two members")
    assert value(scrape(port), "forkd_chat_rooms") == 1
    before = value(scrape(port), "forkd_chat_messages_delivered_total")
    a.send("hi there\n")
    wait_until(lambda: b.line() == "[ann] hi there", what="bob hears ann")
    wait_until(lambda: value(scrape(port), "forkd_chat_messages_delivered_total") > before,
               what="the delivery counted")
    a.close()
    b.close()
    wait_until(lambda: value(scrape(port), "forkd_chat_members") == 0, what="no members")


# ---- bad input ----

def test_bad_input_is_bounded_and_no_worker_is_lost(forkd_factory):
    d = forkd_factory([{"service": "metrics", "max_header": 1024, "header_timeout": 1}],
                      workers=2, threads=4)
    port = d.ports["metrics"]
    pids = d.workers()

    # a head larger than max_header
    h = Http(port)
    h.send("GET /metrics HTTP/1.1\r\nX-Pad: " + "a" * 4000 + "\r\n\r\n")
    status, _, _ = h.response()
    assert status == 431
    assert h.closed()
    h.close()

    # a head that never completes is cut after header_timeout
    h = Http(port)
    h.send("GET /metrics HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    status, headers, _ = h.response()
    assert status == 408
    assert h.closed()
    assert time.monotonic() - t0 < 5
    h.close()

    # a POST is refused and the connection stays usable
    h = Http(port)
    h.send("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    status, headers, _ = h.response()
    assert status == 405 and headers["allow"] == "GET, HEAD"
    h.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert h.response()[0] == 200
    h.close()

    # a body is refused and the connection closed
    h = Http(port)
    h.send("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    status, _, _ = h.response()
    assert status == 413
    assert h.closed()
    h.close()
    h = Http(port)
    h.send("POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\n0\r\n\r\n")
    assert h.response()[0] == 501
    assert h.closed()
    h.close()

    # garbage is a 400
    h = Http(port)
    h.send("\x00\x01 nonsense\r\n\r\n")
    assert h.response()[0] == 400
    assert h.closed()
    h.close()

    # 50 pipelined requests, answered in order
    h = Http(port)
    burst = "".join(f"GET {'/metrics' if i % 2 == 0 else '/nope%d' % i} HTTP/1.1\r\n"
                    f"Host: x\r\n\r\n" for i in range(50))
    h.send(burst)
    statuses = [h.response()[0] for _ in range(50)]
    assert statuses == [200 if i % 2 == 0 else 404 for i in range(50)]
    h.send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = h.response()
    assert status == 200 and headers["connection"] == "close"
    assert h.closed()
    h.close()

    assert d.workers() == pids
    m = scrape(port)
    assert value(m, "forkd_worker_restarts_total") == 0


def test_scrape_cost_with_64_workers(forkd_factory):
    """Prints what a scrape costs with 64 workers (a figure, not a check)."""
    d = metrics_forkd(forkd_factory, [{"service": "echo"}, {"service": "chat"}],
                      workers=64, threads=2)
    port = d.ports["metrics"]
    wait_until(lambda: value(scrape(port), "forkd_workers_ready") == 64, 30, "64 workers")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
    conn.close()
    times.sort()
    print(f"\nscrape with 64 workers: {len(body)} bytes, median "
          f"{times[len(times) // 2] * 1e6:.0f} us, p90 {times[len(times) * 9 // 10] * 1e6:.0f} us "
          f"(client-side round trip, keep-alive)")
