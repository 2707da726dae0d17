"""The chat page in a real browser: headless Chromium loads it from forkd,
two browser sessions and a telnet user talk in one room, markup stays text,
and the page comes back by itself after the server restarts.

Needs Debian's chromium, chromium-driver and python3-selenium; without them
the tests skip, loudly."""
import os
import shutil

import pytest

from conftest import Client, free_port, wait_until

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:		# reported by browser() below
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HERE = os.path.dirname(os.path.abspath(__file__))
ARTEFACTS = os.path.join(
    os.environ.get("FORKD_BUILDDIR", os.path.join(HERE, "..", "..", "build")),
    "tests", "artefacts")
MARKUP = "<img src=x onerror=alert(1)> <b>bold</b> &amp;"


@pytest.fixture
def browsers(tmp_path):
    """browsers(name) -> a fresh headless Chromium; all are quit at the end."""
    missing = [what for what, ok in (("python3-selenium", webdriver is not None),
                                     ("chromium", CHROMIUM), ("chromium-driver", DRIVER))
               if not ok]
    if missing:
        pytest.skip("SKIPPED LOUDLY: the chat page was NOT tested in a browser: missing "
                    + ", ".join(missing) + " (apt-get install chromium chromium-driver "
                    "python3-selenium)")
    made = []

    def make(name):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--window-size=1100,700", f"--user-data-dir={tmp_path / ('chrome-' + name)}"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        b = webdriver.Chrome(service=Service(DRIVER, log_output=os.devnull)
                             if "log_output" in Service.__init__.__code__.co_varnames
                             else Service(DRIVER), options=opts)
        b.set_page_load_timeout(20)
        made.append(b)
        return b
    yield make
    for b in made:
        b.quit()


def text_of(b, css):
    return b.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)


def log_lines(b):
    """The page's log as (who, text) pairs; who is None for system lines."""
    return [tuple(x) for x in b.execute_script("""
        return Array.from(document.querySelectorAll('#log .line')).map(function (d) {
          var w = d.querySelector('.who');
          return [w ? w.textContent : null, d.querySelector('.text').textContent];
        });""")]


def members(b):
    return sorted(b.execute_script(
        "return Array.from(document.querySelectorAll('#members li')).map(e => e.textContent);"))


def say(b, text):
    box = b.find_element(By.ID, "input")
    wait_until(lambda: box.is_enabled(), 10, "the input to be enabled")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def open_page(b, port, room):
    b.get(f"http://127.0.0.1:{port}/{room}/")
    wait_until(lambda: text_of(b, "#status") == "connected", 10, "the page to connect")
    wait_until(lambda: (text_of(b, "#nick") or "").startswith("guest"), 10, "a guest nick")
    assert text_of(b, "#room") == room


def rename(b, nick):
    say(b, f"/nick {nick}")
    wait_until(lambda: text_of(b, "#nick") == nick, 10, f"nick {nick}")


def csp_reports(b):
    return [e["message"] for e in b.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused" in e["message"]]


def telnet_member(port, room, nick):
    c = Client(port)
    assert c.line().startswith("* welcome to forkd chat")
    c.line()
    c.send(f"/join {room}\n/nick {nick}\n")
    got = []
    while f"* you are now {nick}" not in got:
        l = c.line()
        assert l is not None
        got.append(l)
    return c


def telnet_until(c, want, timeout=10):
    seen = []
    while True:
        l = c.line(timeout)
        assert l is not None, f"EOF waiting for {want!r}; got {seen}"
        if l == want:
            return seen
        seen.append(l)


def test_two_browsers_and_telnet_share_a_room(forkd_factory, browsers):
    wsport, lport = free_port(), free_port()
    d = forkd_factory([{"service": "chat", "port": wsport, "protocol": "websocket"},
                       {"service": "chat", "port": lport}], workers=2, threads=4)
    a, b = browsers("a"), browsers("b")
    open_page(a, wsport, "websock1")
    rename(a, "alice")
    tom = telnet_member(lport, "websock1", "tom")
    open_page(b, wsport, "websock1")
    rename(b, "bob")

    # /who on either side lists members of both protocols
    wait_until(lambda: members(a) == ["alice", "bob", "tom"], 10,
               f"alice's member list (now {members(a)})")
    wait_until(lambda: members(b) == ["alice", "bob", "tom"], 10, "bob's member list")
    tom.send("/who\n")
    l = tom.line()
    while not l.startswith("* websock1 ("):
        l = tom.line()
    assert l.startswith("* websock1 (3): ")
    assert sorted(l.split(": ", 1)[1].split(", ")) == ["alice", "bob", "tom"]

    say(a, "hello from alice")
    wait_until(lambda: ("alice", "hello from alice") in log_lines(b), 10, "bob sees alice")
    wait_until(lambda: ("alice", "hello from alice") in log_lines(a), 10, "alice sees herself")
    telnet_until(tom, "[alice] hello from alice")

    tom.send("hi from telnet\n")
    for x in (a, b):
        wait_until(lambda: ("tom", "hi from telnet") in log_lines(x), 10, "browsers see tom")

    # markup is text: no element is made from it, nothing runs
    say(b, MARKUP)
    wait_until(lambda: ("bob", MARKUP) in log_lines(a), 10, "alice sees bob's markup as text")
    telnet_until(tom, f"[bob] {MARKUP}")
    tom.send("<script>alert(2)</script>\n")
    for x in (a, b):
        wait_until(lambda: ("tom", "<script>alert(2)</script>") in log_lines(x), 10,
                   "the script tag as text")
        assert x.execute_script("return document.images.length") == 0
        assert x.find_elements(By.CSS_SELECTOR, "#log img, #log b, #log script") == []
        with pytest.raises(NoAlertPresentException):
            x.switch_to.alert.text
    # a bad nick is refused and said so, the page keeps its nick
    say(a, "/nick <img>")
    wait_until(lambda: any(w is None and t.startswith("bad nick") for w, t in log_lines(a)),
               10, "the bad nick error")
    assert text_of(a, "#nick") == "alice"
    # a message longer than a request may be is refused on the page, which
    # stays connected (sent, it would end the connection with 1009)
    say(a, '"' * 4500)
    wait_until(lambda: any(w is None and t.startswith("too long to send")
                           for w, t in log_lines(a)), 10, "the too-long error")
    # the text stays in the box to be cut down
    assert len(a.find_element(By.ID, "input").get_attribute("value")) == 4500
    a.find_element(By.ID, "input").clear()
    say(a, "still here")
    wait_until(lambda: ("alice", "still here") in log_lines(b), 10, "a message after it")
    assert text_of(a, "#status") == "connected"

    assert csp_reports(a) == [] and csp_reports(b) == [], csp_reports(a) + csp_reports(b)
    os.makedirs(ARTEFACTS, exist_ok=True)
    shot = os.path.join(ARTEFACTS, "webchat.png")
    assert a.save_screenshot(shot)
    assert os.path.getsize(shot) > 1000
    tom.close()


def test_page_reconnects_after_a_restart(forkd_factory, browsers):
    wsport = free_port()
    listeners = [{"service": "chat", "port": wsport, "protocol": "websocket"}]
    d = forkd_factory(listeners, workers=1, threads=2)
    a = browsers("r")
    open_page(a, wsport, "lobby")
    rename(a, "carol")
    d.stop()
    wait_until(lambda: "disconnected" in (text_of(a, "#status") or ""), 10,
               "the page to say it is disconnected")
    assert any(w is None and t.startswith("connection lost") for w, t in log_lines(a))
    forkd_factory(listeners, workers=1, threads=2)
    wait_until(lambda: text_of(a, "#status") == "connected", 30, "the page to reconnect")
    assert any(w is None and t == "reconnected" for w, t in log_lines(a))
    # it asks for its nick again and is back in its room
    wait_until(lambda: text_of(a, "#nick") == "carol", 10, "the nick back")
    assert text_of(a, "#room") == "lobby"
    say(a, "back again")
    wait_until(lambda: ("carol", "back again") in log_lines(a), 10, "a message after")
