"""The chat service's JSON form (format = "json"), over plain TCP lines: the
exact objects members get, and requests as JSON.  The shapes are compared
whole, so a renamed or missing key fails here."""
import json

import pytest

COMMANDS = ["/nick NAME", "/join ROOM", "/who", "/rooms", "/help", "/quit"]


class JsonMember:
    """A member that reads one JSON object per line."""

    def __init__(self, d):
        self.c = d.client("chat")
        self.welcome = self.next()
        assert self.welcome["event"] == "welcome", self.welcome
        self.nick = self.welcome["nick"]

    def next(self, timeout=5.0):
        l = self.c.line(timeout)
        assert l is not None, "EOF"
        return json.loads(l)

    def until(self, pred, what="object"):
        seen = []
        while True:
            o = self.next()
            if pred(o):
                return o, seen
            seen.append(o)

    def send(self, text):
        self.c.send(text + "\n")

    def ask(self, obj):
        self.send(json.dumps(obj))

    def rename(self, nick):
        self.ask({"command": "nick", "arg": nick})
        o, _ = self.until(lambda o: o.get("event") == "you")
        assert o == {"event": "you", "nick": nick, "room": "lobby",
                     "text": f"you are now {nick}"}
        self.nick = nick


@pytest.fixture
def chat(forkd_factory):
    return forkd_factory([{"service": "chat"}], workers=2, threads=2,
                         chat={"format": "json"})


def test_welcome_shape(chat):
    m = JsonMember(chat)
    assert m.welcome == {"event": "welcome", "nick": m.nick, "room": "lobby",
                         "commands": COMMANDS}
    assert m.nick.startswith("guest")


def test_message_shapes_between_members(chat):
    a, b = JsonMember(chat), JsonMember(chat)
    a.rename("alice")
    b.rename("bob")
    a.send("hello from a plain client")
    want = {"payload": {"message": "hello from a plain client", "nick": "alice",
                        "room": "lobby"}}
    o, _ = b.until(lambda o: "payload" in o)
    assert o == want
    # the sender gets its own message back, as a Channels room does
    o, _ = a.until(lambda o: "payload" in o)
    assert o == want
    a.ask({"message": "<img src=x onerror=alert(1)> \"quoted\""})
    o, _ = b.until(lambda o: "payload" in o)
    assert o["payload"]["message"] == "<img src=x onerror=alert(1)> \"quoted\""
    # a JSON message is a message even when it looks like a command
    a.ask({"message": "/who"})
    o, _ = b.until(lambda o: "payload" in o)
    assert o["payload"] == {"message": "/who", "nick": "alice", "room": "lobby"}
    # JSON that asks for neither is said as it is
    a.send('{"foo": 1}')
    o, _ = b.until(lambda o: "payload" in o)
    assert o["payload"]["message"] == '{"foo": 1}'
    # control characters inside JSON strings are neutralised as on a terminal
    a.ask({"message": "one\ntwo\u0000three\u001b[2J"})
    o, _ = b.until(lambda o: "payload" in o)
    assert o["payload"]["message"] == "one?two?three?[2J"


def test_room_event_shapes(chat):
    a = JsonMember(chat)
    a.rename("alice")
    b = JsonMember(chat)
    o, _ = a.until(lambda o: o.get("event") == "join")
    assert o == {"event": "join", "nick": b.nick, "room": "lobby"}
    old = b.nick
    b.rename("bob")
    o, _ = a.until(lambda o: o.get("event") == "nick")
    assert o == {"event": "nick", "from": old, "nick": "bob", "room": "lobby"}
    b.ask({"command": "join", "arg": "dev"})
    o, _ = b.until(lambda o: o.get("event") == "you")
    assert o == {"event": "you", "nick": "bob", "room": "dev", "text": "you joined dev"}
    o, _ = a.until(lambda o: o.get("event") == "leave")
    assert o == {"event": "leave", "nick": "bob", "room": "lobby"}


def test_reply_shapes(chat):
    a, b = JsonMember(chat), JsonMember(chat)
    a.rename("alice")
    b.rename("bob")
    a.ask({"command": "who"})
    o, _ = a.until(lambda o: o.get("event") == "who")
    o["members"].sort()
    assert o == {"event": "who", "room": "lobby", "count": 2,
                 "members": ["alice", "bob"], "more": False}
    a.send("/rooms")	# the text form of a command works too
    o, _ = a.until(lambda o: o.get("event") == "rooms")
    assert o == {"event": "rooms", "count": 1,
                 "rooms": [{"room": "lobby", "members": 2}], "more": False}
    a.ask({"command": "help"})
    o, _ = a.until(lambda o: o.get("event") == "help")
    assert list(o) == ["event", "commands"]
    assert [c["command"] for c in o["commands"]] == COMMANDS
    assert all(set(c) == {"command", "help"} and c["help"] for c in o["commands"])
    a.ask({"command": "nick", "arg": "bob"})
    o, _ = a.until(lambda o: "error" in o)
    assert o == {"error": "nick 'bob' is taken in lobby: choose another with /nick NAME"}
    a.ask({"command": "nick", "arg": "alice"})
    o, _ = a.until(lambda o: o.get("event") == "info")
    assert o == {"event": "info", "text": "you are already alice"}
    a.ask({"command": "frob"})
    o, _ = a.until(lambda o: "error" in o)
    assert o == {"error": "unknown command '/frob' (use /nick NAME, /join ROOM, /who, "
                          "/rooms, /quit)"}
    for bad, err in ((
            {"message": 5}, '"message" must be a string'), (
            {"message": "x", "command": "who"}, 'send "message" or "command", not both'), (
            {"command": "nick", "arg": 7}, '"arg" must be a string')):
        a.ask(bad)
        o, _ = a.until(lambda o: "error" in o)
        assert o == {"error": err}, bad
    # the session is still there after every error
    a.ask({"command": "who"})
    o, _ = a.until(lambda o: o.get("event") == "who")
    assert o["count"] == 2


def test_text_format_keeps_lines(forkd_factory):
    """format = "text" keeps the text lines and takes JSON as text; /help."""
    d = forkd_factory([{"service": "chat"}], workers=1, threads=2,
                      chat={"format": "text"})
    c = d.client("chat")
    assert c.line().startswith("* welcome to forkd chat: you are guest")
    assert c.line() == "* commands: /nick NAME, /join ROOM, /who, /rooms, /quit"
    c.send('{"message": "not parsed here"}\n')
    c.send("/help\n")
    lines = [c.line() for _ in range(8)]
    assert lines[0] == "* commands:"
    assert lines[1].startswith("*   /nick NAME ")
    assert lines[-1] == "* anything else you type is said to the room"
