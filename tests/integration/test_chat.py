"""The chat service: rooms of people at telnet, whichever worker holds them."""
import os
import re
import signal
import socket
import threading
import time

from conftest import Client, wait_until, owner

WELCOME = re.compile(r"\* welcome to forkd chat: you are (guest\d+) in room (\S+)")
COMMANDS = "* commands: /nick NAME, /join ROOM, /who, /rooms, /quit"
BAD_NICK = "ERR bad nick: use 1-32 letters, digits, '_', '-' or '.'"
BAD_ROOM = "ERR bad room name: use 1-32 letters, digits, '_', '-' or '.'"
ROOM_FULL = "ERR cannot join lobby: that room is full; try another room (/rooms lists them)"
TOO_MANY = "ERR cannot join {}: too many rooms; join one that exists (/rooms lists them)"


ANNOUNCE = re.compile(r"\* (?!you )\S+ (joined \S+|left \S+|is now known as \S+)")


def member(d, nick=None, room="lobby", sock=None):
    """A chat client that has read its greeting; .nick is its nick.
    Announcements about others that overtake the greeting or the /nick
    reply (lines from other workers come on their own time) are kept in
    .early; test_greeting_comes_first checks the greeting's place."""
    c = d.client("chat") if sock is None else sock
    c.early = []
    while True:
        l = c.line()
        assert l is not None, "EOF before the welcome line"
        m = WELCOME.fullmatch(l)
        if m:
            break
        assert ANNOUNCE.fullmatch(l), f"not a welcome line: {l!r}"
        c.early.append(l)
    assert m.group(2) == room
    assert c.line() == COMMANDS
    c.nick = c.guest = m.group(1)
    if nick:
        c.send(f"/nick {nick}\n")
        before = until(c, f"* you are now {nick}")
        assert all(ANNOUNCE.fullmatch(l) for l in before), before
        c.early += before
        c.nick = nick
    return c


def until(c, want, timeout=5.0):
    """Lines read before the line `want` (which is consumed)."""
    before = []
    while True:
        l = c.line(timeout)
        assert l is not None, f"EOF while waiting for {want!r}; got {before}"
        if l == want:
            return before
        before.append(l)


def ask(c, req):
    """The reply to req, past announcements that other workers' members
    may have queued before it."""
    c.send(req + "\n")
    while True:
        l = c.line()
        if l is None or not ANNOUNCE.fullmatch(l):
            return l


def who(c):
    """(lines before the /who reply, room, set of nicks)."""
    c.send("/who\n")
    before = []
    while True:
        l = c.line()
        assert l is not None, f"EOF waiting for the /who reply; got {before}"
        m = re.fullmatch(r"\* (\S+) \((\d+)\): (.*)", l)
        if m and not l.startswith("* rooms ("):
            names = set(m.group(3).split(", ")) if m.group(3) else set()
            assert len(names) == int(m.group(2)), l
            return before, m.group(1), names
        before.append(l)


def rooms(c):
    reply = ask(c, "/rooms")
    m = re.fullmatch(r"\* rooms \((\d+)\): (.*)", reply)
    assert m, reply
    items = m.group(2).split(", ") if m.group(2) else []
    assert len(items) == int(m.group(1)), reply
    out = {}
    for it in items:
        mm = re.fullmatch(r"(\S+) \((\d+)\)", it)
        assert mm, reply
        out[mm.group(1)] = int(mm.group(2))
    return out


def spread(d, n, each=2, extra=8):
    """At least n members named m0, m1, .. in the lobby, and which worker holds
    each (from /proc, not assumed).  More join (at most `extra`) until each of
    the two workers holds at least `each`; fails if they never do."""
    ms = []
    where = {}
    for i in range(n + extra):
        if i >= n and len(where) == 2 and all(len(v) >= each for v in where.values()):
            break
        m = member(d, f"m{i}")
        m.worker = owner(d, m)
        where.setdefault(m.worker, []).append(m.nick)
        ms.append(m)
    assert len(where) == 2 and all(len(v) >= each for v in where.values()), \
        f"{len(ms)} members not spread over both workers: {where}"
    return ms


def settle(ms):
    """Each of ms (joined in that order) reads the joins and renames of the
    ones after it; other lines may only be late news of the ones before."""
    for i, m in enumerate(ms):
        want = set()
        for o in ms[i + 1:]:
            want.add(f"* {o.guest} joined lobby")
            if o.nick != o.guest:
                want.add(f"* {o.guest} is now known as {o.nick}")
        want -= set(m.early)
        old = set()
        for o in ms[:i]:
            old.add(f"* {o.guest} joined lobby")
            old.add(f"* {o.guest} is now known as {o.nick}")
        while want:
            l = m.line()
            assert l in want or l in old, f"{m.nick}: unexpected {l!r}"
            want.discard(l)


def test_greeting_names_the_room_and_the_commands(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    c = d.client("chat")
    m = WELCOME.fullmatch(c.line())
    assert m and m.group(2) == "lobby"
    assert c.line() == COMMANDS
    # guests get distinct names
    other = member(d)
    assert other.nick != m.group(1)
    d2 = forkd_factory([{"service": "chat"}], workers=1, threads=2,
                       chat={"default_room": "hall"})
    c2 = member(d2, room="hall")
    assert who(c2)[1] == "hall"


def test_greeting_comes_first_even_in_a_busy_room(forkd_factory):
    """A newcomer learns who it is before anything else: banner, welcome,
    commands, and only then the room's lines, however busy the room is."""
    d = forkd_factory([{"service": "chat", "banner": "forkd chat here"}],
                      workers=2, threads=4)

    def joined(c):
        assert c.line() == "forkd chat here"
        return member(d, sock=c)
    talkers = []
    while len({owner(d, t) for t in talkers}) < 2 and len(talkers) < 10:
        talkers.append(joined(d.client("chat")))
    assert len({owner(d, t) for t in talkers}) == 2, "talkers all on one worker"
    stop = threading.Event()

    def talk():
        i = 0
        while not stop.is_set():
            for t in talkers:
                t.send(f"busy {i}\n")
                i += 1
            stop.wait(0.002)
    th = threading.Thread(target=talk)
    th.start()
    bad = []
    try:
        for k in range(200):
            c = d.client("chat")
            first = [c.line(), c.line(), c.line()]
            if (first[0] != "forkd chat here" or not WELCOME.fullmatch(first[1] or "")
                    or first[2] != COMMANDS):
                bad.append(first)
            c.close()
    finally:
        stop.set()
        th.join()
    assert bad == [], f"{len(bad)} of 200 newcomers did not get banner, welcome, " \
        f"commands first; e.g. {bad[:3]}"


def test_nick(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    a = member(d)
    b = member(d)
    assert a.line() == f"* {b.nick} joined lobby"
    guest = a.nick
    assert a.ask("/nick alice") == "* you are now alice"
    assert b.line() == f"* {guest} is now known as alice"
    assert a.ask("/nick alice") == "* you are already alice"
    # unique in the room
    assert b.ask("/nick alice") == \
        "ERR nick 'alice' is taken in lobby: choose another with /nick NAME"
    assert b.ask(f"/nick {guest}") == f"* you are now {guest}"   # freed by alice
    assert a.line() == f"* {b.nick} is now known as {guest}"
    b.nick = guest
    # bad names
    for bad in ("", "two words", "a/b", "x" * 33, "caf\u00e9", "semi;colon", "[alice]"):
        assert b.ask(f"/nick {bad}") == BAD_NICK, bad
    ok = "Az09_-." + "y" * 25
    assert b.ask(f"/nick {ok}") == f"* you are now {ok}"
    assert a.line() == f"* {guest} is now known as {ok}"
    assert who(a)[2] == {"alice", ok}
    # messages carry the new nick
    b.send("hello\n")
    assert a.line() == f"[{ok}] hello"


def test_nick_unique_across_workers(forkd_factory):
    """Two members held by different worker processes cannot share a nick:
    the room's member list is the whole daemon's, not one worker's."""
    d = forkd_factory([{"service": "chat"}], workers=2, threads=2)
    ms = spread(d, 2, each=1)
    a = ms[0]
    b = next(m for m in ms if m.worker != a.worker)
    assert ask(b, f"/nick {a.nick}") == \
        f"ERR nick '{a.nick}' is taken in lobby: choose another with /nick NAME"
    # the nick is free again, for a member on another worker, once its
    # owner leaves
    assert ask(b, "/nick bob") == "* you are now bob"
    a.send("/quit\n")
    until(a, "Bye")
    wait_until(lambda: a.nick not in who(b)[2], 5, f"{a.nick} to leave")
    assert ask(b, f"/nick {a.nick}") == f"* you are now {a.nick}"


def test_join_who_rooms(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    a = member(d, "alice")
    b = member(d, "bob")
    assert until(a, f"* {b.guest} is now known as bob") == [f"* {b.guest} joined lobby"]
    assert who(a) == ([], "lobby", {"alice", "bob"})
    assert rooms(a) == {"lobby": 2}
    assert b.ask("/join dev") == "* you joined dev"
    assert a.line() == "* bob left lobby"
    assert b.ask("/join dev") == "* you are already in dev"
    assert who(b) == ([], "dev", {"bob"})
    assert who(a) == ([], "lobby", {"alice"})
    assert rooms(b) == {"lobby": 1, "dev": 1}
    assert a.ask("/join dev") == "* you joined dev"
    assert b.line() == "* alice joined dev"
    assert who(b) == ([], "dev", {"alice", "bob"})
    # the empty lobby is gone
    assert rooms(a) == {"dev": 2}
    for bad in ("", "two words", "a/b", "r" * 33):
        assert a.ask(f"/join {bad}") == BAD_ROOM, bad
    assert who(a)[1] == "dev"
    # nicks are unique per room, not per server
    c = member(d)
    assert c.ask("/nick alice") == "* you are now alice"
    # ... so a move into a room where the nick is taken is refused, in place
    assert c.ask("/join dev") == \
        "ERR cannot join dev: that nick is taken in that room; change yours first with /nick NAME"
    assert who(c)[1:] == ("lobby", {"alice"})
    # commands in any case; unknown ones are refused
    assert c.ask("/WHO") == "* lobby (1): alice"
    assert c.ask("/frob x") == \
        "ERR unknown command '/frob' (use /nick NAME, /join ROOM, /who, /rooms, /quit)"
    assert c.ask("/") == \
        "ERR unknown command '/' (use /nick NAME, /join ROOM, /who, /rooms, /quit)"


def test_lines_reach_the_room_and_only_the_room(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    a = member(d, "alice")
    b = member(d, "bob")
    c = member(d, "carol")
    e = member(d, "erin")
    settle([a, b, c, e])
    assert c.ask("/join dev") == "* you joined dev"
    assert e.line() == "* carol left lobby"
    assert e.ask("/join dev") == "* you joined dev"
    for x in (a, b):
        assert x.line() == "* carol left lobby"
        assert x.line() == "* erin left lobby"
    assert c.line() == "* erin joined dev"
    a.send("hello lobby\n")
    c.send("hello dev\n")
    b.send("  spaces and\ttabs kept  \n")
    assert b.line() == "[alice] hello lobby"
    assert e.line() == "[carol] hello dev"
    assert a.line() == "[bob]   spaces and\ttabs kept  "
    # nobody got their own line, nor the other room's
    assert who(a)[0] == []
    assert who(b)[0] == []
    assert who(c)[0] == []
    assert who(e)[0] == []
    # a message from outside any room is refused (the room was full at connect)
    d2 = forkd_factory([{"service": "chat"}], workers=1, threads=2, chat={"max_members": 1})
    first = member(d2)
    lone = d2.client("chat")
    assert re.fullmatch(r"\* welcome to forkd chat: you are guest\d+, in no room "
                        r"\(lobby: that room is full\)", lone.line())
    assert lone.line() == COMMANDS
    assert lone.ask("hi") == "ERR you are in no room: /join ROOM first"
    assert lone.ask("/who") == "ERR you are in no room: /join ROOM first"
    assert who(first)[2] == {first.nick}


def test_control_bytes_reach_the_room_neutralised(forkd_factory):
    """A member cannot rewrite what others see: a lone CR, escape sequences
    and NULs arrive as '?'; tabs and UTF-8 arrive as sent."""
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    a = member(d, "alice")
    b = member(d, "bob")
    settle([a, b])
    a.send(b"hi\rfake line\x1b[31mred\x00\x7f\tok \xc3\xa9t\xc3\xa9\n")
    assert b.line() == "[alice] hi?fake line?[31mred??\tok \u00e9t\u00e9"


def test_joins_leaves_and_nick_changes_are_announced(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2)
    a = member(d, "alice")
    b = member(d)
    assert a.line() == f"* {b.nick} joined lobby"
    assert b.ask("/nick bob") == "* you are now bob"
    assert a.line() == f"* {b.nick} is now known as bob"
    c = member(d, "carol")
    for m in (a, b):
        assert until(m, f"* {c.guest} is now known as carol") == [f"* {c.guest} joined lobby"]
    # /quit
    c.send("/quit\n")
    assert c.line() == "Bye"
    assert c.eof()
    assert a.line() == "* carol left lobby"
    assert b.line() == "* carol left lobby"
    # a plain close
    x = member(d, "xavier")
    for m in (a, b):
        assert until(m, f"* {x.guest} is now known as xavier") == \
            [f"* {x.guest} joined lobby"]
    x.close()
    assert a.line() == "* xavier left lobby"
    assert b.line() == "* xavier left lobby"
    # moving: left in the old room, joined in the new one
    assert b.ask("/join dev") == "* you joined dev"
    assert a.line() == "* bob left lobby"
    assert a.ask("/join dev") == "* you joined dev"
    assert b.line() == "* alice joined dev"
    assert a.ask("/nick ann") == "* you are now ann"
    assert b.line() == "* alice is now known as ann"


def test_everyone_hears_everyone_across_workers(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=4)
    ms = spread(d, 10)
    settle(ms)
    # two rooms, each with members on both workers
    by_worker = {}
    for m in ms:
        by_worker.setdefault(m.worker, []).append(m)
    dev = []
    for group in by_worker.values():
        dev += group[:len(group) // 2]
    lobby = [m for m in ms if m not in dev]
    for m in dev:
        assert ask(m, "/join dev") == "* you joined dev"
    assert len({m.worker for m in dev}) == 2 and len({m.worker for m in lobby}) == 2
    # everyone says something
    for m in ms:
        m.send(f"hello from {m.nick}\n")
    for room in (lobby, dev):
        for m in room:
            want = {f"[{o.nick}] hello from {o.nick}" for o in room if o is not m}
            got = set()
            while got != want:
                try:
                    l = m.line(timeout=2)
                except socket.timeout:
                    break
                assert l is not None, f"{m.nick}: EOF"
                if l.startswith("["):
                    assert l in want, f"{m.nick} got {l!r} from outside its room"
                    assert l not in got, f"{m.nick} got {l!r} twice"
                    got.add(l)
                else:
                    assert re.fullmatch(r"\* m\d+ (joined|left) (lobby|dev)|"
                                        r"\* guest\d+ (joined lobby|is now known as m\d+)",
                                        l), f"{m.nick}: unexpected {l!r}"
            missing = sorted(want - got)
            assert not missing, \
                f"{m.nick} (worker {m.worker}) never got {len(missing)} of {len(want)}: {missing}"
    # every line has been delivered everywhere: nothing from the other room
    # may be queued behind them
    for m in ms:
        before = who(m)[0]
        assert not [l for l in before if l.startswith("[")], f"{m.nick}: {before}"
    assert who(lobby[0])[2] == {m.nick for m in lobby}
    assert who(dev[0])[2] == {m.nick for m in dev}


def test_order_is_kept_across_workers(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=4)
    ms = spread(d, 6)
    sender = ms[0]
    far = [m for m in ms if m.worker != sender.worker][0]
    near = [m for m in ms[1:] if m.worker == sender.worker][0]
    settle(ms)
    n = 300
    sender.send("".join(f"seq {i}\n" for i in range(n)))
    for m in (far, near):
        got = collect(m, "[m0] ", n)
        where = "another worker" if m is far else "the same worker"
        assert len(got) == n, f"{m.nick} on {where} got {len(got)} of {n} lines"
        assert got == [f"seq {i}" for i in range(n)], f"{m.nick} on {where}: out of order"


def collect(m, prefix, n, quiet=2.0):
    """Up to n lines starting with prefix (prefix stripped), in arrival
    order; stops early when nothing has come for `quiet` seconds."""
    got = []
    while len(got) < n:
        try:
            l = m.line(timeout=quiet)
        except socket.timeout:
            break
        assert l is not None, f"{m.nick}: EOF"
        if l.startswith(prefix):
            got.append(l[len(prefix):])
    return got


def slow_client(port):
    """A client with a tiny receive buffer, set before connecting."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    c = Client.__new__(Client)
    c.sock = s
    c.buf = b""
    return c


def test_slow_reader_is_dropped_and_the_room_goes_on(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=4, max_line=3072,
                      max_output=4096)
    ms = spread(d, 4)
    talker, listeners = ms[0], ms[1:]
    settle(ms)
    slow = member(d, sock=slow_client(d.ports["chat"]))
    for m in ms:
        assert until(m, f"* {slow.nick} joined lobby") == []
    # the slow member never reads from here on
    n = 300
    pad = "p" * 900
    left_at = {}
    worst = 0.0
    t0 = time.monotonic()
    for i in range(n):
        t = time.monotonic()
        talker.send(f"{i} {pad}\n")
        for m in listeners:
            while True:
                l = m.line(timeout=2)
                assert l is not None, f"{m.nick}: EOF"
                if l == f"* {slow.nick} left lobby":
                    left_at[m.nick] = i
                    continue
                assert l == f"[m0] {i} {pad}", f"{m.nick}: {l[:60]!r}"
                break
        worst = max(worst, time.monotonic() - t)
    total = time.monotonic() - t0
    assert worst < 1.0, f"a line took {worst:.2f}s to reach the room"
    assert total < 15
    # dropped while the chat was going on (or just after), and the room told
    try:
        wait_until(lambda: slow.nick not in who(talker)[2], 3, "the slow member to leave")
    except AssertionError:
        raise AssertionError(
            f"a member that never reads (max_output=4096, SO_RCVBUF=4096) is still in "
            f"the room after {n} lines ({n * (len(pad) + 10)} bytes) were sent to it")
    for m in listeners:
        if m.nick not in left_at:
            assert until(m, f"* {slow.nick} left lobby") == []
            left_at[m.nick] = n
    # the slow member: what it got, then the end
    got = []
    slow.sock.settimeout(5)
    while True:
        l = slow.line(timeout=5)
        if l is None:
            break
        got.append(l)
    msgs = [l for l in got if l.startswith("[m0] ")]
    assert len(msgs) < n
    assert msgs == [f"[m0] {i} {pad}" for i in range(len(msgs))]
    rest = [l for l in got if not l.startswith("[m0] ")]
    # the last thing it hears is why it is being dropped
    assert rest == ["ERR too slow: output queue full, disconnecting"], rest[:3]
    assert got[-1] == rest[0]
    # and the others still chat
    listeners[0].send("after\n")
    assert until(talker, f"[{listeners[0].nick}] after") == []


def test_a_worker_crash_leaves_the_others_chatting(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=4)
    ms = spread(d, 8)
    settle(ms)
    victim = ms[0].worker
    dead = [m for m in ms if m.worker == victim]
    live = [m for m in ms if m.worker != victim]
    os.kill(victim, signal.SIGKILL)
    for m in dead:
        assert m.eof(), f"{m.nick} still connected to a killed worker"
    live[0].send("still here\n")
    for m in live[1:]:
        got = until(m, f"[{live[0].nick}] still here")
        assert all(l.startswith("* ") for l in got), got
    # the dead worker's members drop out of the room
    want = {m.nick for m in live}

    def clean():
        return who(live[0])[2] == want
    wait_until(clean, 5, f"/who to list only {sorted(want)}", interval=0.1)
    assert rooms(live[0]) == {"lobby": len(live)}
    # their nicks are free again, and a newcomer (on any worker) chats
    wait_until(lambda: len(d.workers()) == 2 and victim not in d.workers(), 5,
               "a replacement worker")
    first = member(d, dead[0].nick)
    new = [first]
    # newcomers until one lands on the replacement worker
    for i in range(10):
        if len({owner(d, n) for n in new + live}) == 2:
            break
        new.append(member(d, f"new{i}"))
    assert len({owner(d, n) for n in new + live}) == 2, "no newcomer on the new worker"
    new[0].send("back\n")
    for m in live + new[1:]:
        until(m, f"[{dead[0].nick}] back")
    live[0].send("welcome\n")
    for m in new:
        until(m, f"[{live[0].nick}] welcome")


def test_max_members(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=2, chat={"max_members": 2})
    a = member(d, "alice")
    b = member(d, "bob")
    c = d.client("chat")
    m = re.fullmatch(r"\* welcome to forkd chat: you are (guest\d+), in no room "
                     r"\(lobby: that room is full\)", c.line())
    assert m
    assert c.line() == COMMANDS
    assert who(a)[2] == {"alice", "bob"}
    assert ask(c, "/join lobby") == ROOM_FULL
    assert ask(c, "/join dev") == "* you joined dev"
    assert ask(c, "/join lobby") == ROOM_FULL
    assert who(c)[1] == "dev"              # a refused move stays put
    # a place frees up
    b.send("/quit\n")
    until(b, "Bye")

    def joined():
        r = ask(c, "/join lobby")
        assert r in ("* you joined lobby", ROOM_FULL), r
        return r == "* you joined lobby"
    wait_until(joined, 5, "a place in the lobby")
    assert who(a)[2] == {"alice", m.group(1)}


def test_max_rooms(forkd_factory):
    d = forkd_factory([{"service": "chat"}], workers=2, threads=2, chat={"max_rooms": 2})
    a = member(d, "alice")
    b = member(d, "bob")
    c = member(d, "carol")
    settle([a, b, c])
    assert ask(b, "/join dev") == "* you joined dev"
    assert ask(c, "/join ops") == TOO_MANY.format("ops")
    assert who(c)[1] == "lobby"
    assert rooms(c) == {"lobby": 2, "dev": 1}
    # joining an existing room is fine
    assert ask(c, "/join dev") == "* you joined dev"
    # when a room empties, it no longer counts
    assert ask(a, "/join dev") == "* you joined dev"
    assert rooms(a) == {"dev": 3}
    assert ask(b, "/join ops") == "* you joined ops"
    d1 = forkd_factory([{"service": "chat"}], workers=1, threads=2, chat={"max_rooms": 1})
    x = member(d1)
    y = member(d1)
    settle([x, y])
    assert ask(x, "/join dev") == TOO_MANY.format("dev")


def test_long_lists_are_cut_to_fit_the_output_limit(forkd_factory):
    """/rooms with more rooms than the output limit holds is cut with "..."
    (the count stays whole) instead of dropping the client that asked."""
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2,
                      max_line=1024, max_output=4096)
    names = [f"room{i:03d}" + "x" * 25 for i in range(130)]   # 32 bytes each
    held = []
    for name in names:
        m = member(d)
        assert m.ask(f"/join {name}") == f"* you joined {name}"
        held.append(m)
    asker = member(d)
    reply = asker.ask("/rooms")
    m = re.fullmatch(r"\* rooms \((\d+)\): (.*)", reply)
    assert m, reply
    assert int(m.group(1)) == len(names) + 1                 # the lobby too
    assert m.group(2).endswith(", ...")
    assert len(reply) <= 4096 // 4 + 32
    shown = m.group(2)[:-len(", ...")].split(", ")
    assert all(re.fullmatch(r"\S+ \(1\)", it) for it in shown), shown
    # still connected, still answered
    assert who(asker)[2] == {asker.nick}
