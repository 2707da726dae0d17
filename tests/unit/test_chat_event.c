/*
 * Unit tests for chat_event.c: events survive the trip between workers,
 * each renders to the exact text line and JSON object members rely on
 * (a renamed key fails here), JSON requests are read as documented, and
 * any bytes become valid UTF-8.
 *
 * Exit status 0 when everything passed, 1 otherwise.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_event.h"
#include "check.h"

static void
check_render(enum chat_kind kind, const char *nick, const char *text, const char *room,
    const char *want_text, const char *want_json)
{
	struct chat_event ev = { kind, nick, text, strlen(text) }, back;
	char buf[512], *out;
	size_t n, len;

	n = chat_event_encode(buf, sizeof(buf), &ev);
	CHECK(n == CHAT_EVENT_OVERHEAD + strlen(nick) + strlen(text), "encode %c: %zu",
	    kind, n);
	chat_event_decode(buf, n, &back);
	CHECK(back.kind == kind && strcmp(back.nick, nick) == 0 &&
	    back.text_len == strlen(text) && memcmp(back.text, text, back.text_len) == 0,
	    "round trip of %c %s", kind, nick);

	out = chat_event_text(&back, room, &len);
	CHECK(out != NULL && len == strlen(want_text) && memcmp(out, want_text, len) == 0,
	    "text: got '%.*s', want '%s'", out ? (int)len : 0, out ? out : "", want_text);
	free(out);
	out = chat_event_json(&back, room, &len);
	CHECK(out != NULL && len == strlen(want_json) && memcmp(out, want_json, len) == 0,
	    "json: got '%.*s', want '%s'", out ? (int)len : 0, out ? out : "", want_json);
	free(out);
}

static void
test_render(void)
{
	check_render(CHAT_MESSAGE, "alice", "hello", "websock1",
	    "[alice] hello\r\n",
	    "{\"payload\":{\"message\":\"hello\",\"nick\":\"alice\",\"room\":\"websock1\"}}\r\n");
	check_render(CHAT_MESSAGE, "bob", "<img src=x onerror=alert(1)> \"q\" \\", "lobby",
	    "[bob] <img src=x onerror=alert(1)> \"q\" \\\r\n",
	    "{\"payload\":{\"message\":\"<img src=x onerror=alert(1)> \\\"q\\\" \\\\\","
	    "\"nick\":\"bob\",\"room\":\"lobby\"}}\r\n");
	check_render(CHAT_MESSAGE, "bob", "", "lobby", "[bob] \r\n",
	    "{\"payload\":{\"message\":\"\",\"nick\":\"bob\",\"room\":\"lobby\"}}\r\n");
	check_render(CHAT_JOIN, "alice", "", "lobby", "* alice joined lobby\r\n",
	    "{\"event\":\"join\",\"nick\":\"alice\",\"room\":\"lobby\"}\r\n");
	check_render(CHAT_LEAVE, "alice", "", "lobby", "* alice left lobby\r\n",
	    "{\"event\":\"leave\",\"nick\":\"alice\",\"room\":\"lobby\"}\r\n");
	check_render(CHAT_LEAVE, "alice", "too slow", "lobby",
	    "* alice left lobby (too slow)\r\n",
	    "{\"event\":\"leave\",\"nick\":\"alice\",\"room\":\"lobby\",\"reason\":\"too slow\"}\r\n");
	check_render(CHAT_NICK, "guest1", "alice", "lobby",
	    "* guest1 is now known as alice\r\n",
	    "{\"event\":\"nick\",\"from\":\"guest1\",\"nick\":\"alice\",\"room\":\"lobby\"}\r\n");
	check_render(CHAT_NOTICE, "", "link to the other hosts lost", "lobby",
	    "* link to the other hosts lost\r\n",
	    "{\"event\":\"notice\",\"text\":\"link to the other hosts lost\",\"room\":\"lobby\"}\r\n");
	/* UTF-8 passes as it is; broken UTF-8 becomes '?' in JSON only */
	check_render(CHAT_MESSAGE, "a", "gr\xc3\xbc\xc3\x9f \xe2\x82\xac", "r",
	    "[a] gr\xc3\xbc\xc3\x9f \xe2\x82\xac\r\n",
	    "{\"payload\":{\"message\":\"gr\xc3\xbc\xc3\x9f \xe2\x82\xac\",\"nick\":\"a\","
	    "\"room\":\"r\"}}\r\n");
	check_render(CHAT_MESSAGE, "a", "x\xff\xc3y", "r", "[a] x\xff\xc3y\r\n",
	    "{\"payload\":{\"message\":\"x??y\",\"nick\":\"a\",\"room\":\"r\"}}\r\n");
}

static void
test_codec_edges(void)
{
	struct chat_event ev = { CHAT_MESSAGE, "alice", "hello", 5 }, back;
	char buf[64];
	char *out;
	size_t len;

	CHECK(chat_event_encode(buf, 12, &ev) == 0, "a buffer one byte short is refused");
	CHECK(chat_event_encode(buf, 13, &ev) == 13, "an exact buffer is enough");
	/* a text line from a layer that speaks text is a notice */
	chat_event_decode("* the link is back\r\n", 20, &back);
	CHECK(back.kind == CHAT_NOTICE && back.text_len == 16 &&
	    memcmp(back.text, "the link is back", 16) == 0, "plain line as notice");
	out = chat_event_text(&back, "r", &len);
	CHECK(out != NULL && len == 20 && memcmp(out, "* the link is back\r\n", 20) == 0,
	    "a notice line renders back the same");
	free(out);
	chat_event_decode("no star\n", 8, &back);
	CHECK(back.kind == CHAT_NOTICE && back.text_len == 7 &&
	    memcmp(back.text, "no star", 7) == 0, "a line without the star");
	/* a mark without a NUL, or an unknown kind, is not an event */
	chat_event_decode("\x1eMalice", 7, &back);
	CHECK(back.kind == CHAT_NOTICE && back.text_len == 7, "no NUL: notice");
	chat_event_decode("\x1eZalice\0x", 9, &back);
	CHECK(back.kind == CHAT_NOTICE, "unknown kind: notice");
	chat_event_decode("", 0, &back);
	CHECK(back.kind == CHAT_NOTICE && back.text_len == 0, "empty: notice");
	out = chat_event_json(&back, "r", &len);
	{
		static const char want[] = "{\"event\":\"notice\",\"text\":\"\",\"room\":\"r\"}\r\n";

		CHECK(out != NULL && len == sizeof(want) - 1 && memcmp(out, want, len) == 0,
		    "empty notice json: %.*s", out ? (int)len : 0, out ? out : "");
	}
	free(out);
}

struct icase {
	const char	*in;
	enum chat_input	 rc;
	const char	*out;	/* NULL for CHAT_IN_LINE */
};

static void
test_input(void)
{
	static const struct icase cases[] = {
		{ "hello", CHAT_IN_LINE, NULL },
		{ "/nick alice", CHAT_IN_LINE, NULL },
		{ "{not json", CHAT_IN_LINE, NULL },
		{ "[1,2]", CHAT_IN_LINE, NULL },
		{ "{\"foo\": 1}", CHAT_IN_LINE, NULL },
		{ "{\"message\": \"hello\"}", CHAT_IN_MESSAGE, "hello" },
		{ "  {\"message\":\"/nick x\"}", CHAT_IN_MESSAGE, "/nick x" },
		{ "{\"message\": \"a\\nb\\u00e9\"}", CHAT_IN_MESSAGE, "a\nb\xc3\xa9" },
		{ "{\"message\": 5}", CHAT_IN_ERROR, "\"message\" must be a string" },
		{ "{\"message\": \"a\", \"command\": \"who\"}", CHAT_IN_ERROR,
		    "send \"message\" or \"command\", not both" },
		{ "{\"command\": \"nick\", \"arg\": \"alice\"}", CHAT_IN_COMMAND, "/nick alice" },
		{ "{\"command\": \"/join\", \"arg\": \"dev\"}", CHAT_IN_COMMAND, "/join dev" },
		{ "{\"command\": \"who\"}", CHAT_IN_COMMAND, "/who" },
		{ "{\"command\": \"who\", \"arg\": \"\"}", CHAT_IN_COMMAND, "/who" },
		{ "{\"command\": \"ni ck\"}", CHAT_IN_ERROR, NULL },
		{ "{\"command\": 3}", CHAT_IN_ERROR, NULL },
		{ "{\"command\": \"nick\", \"arg\": 3}", CHAT_IN_ERROR, "\"arg\" must be a string" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct icase *c = &cases[i];
		char *out;
		size_t olen;
		enum chat_input rc = chat_json_input(c->in, strlen(c->in), &out, &olen);

		CHECK(rc == c->rc, "'%s': rc %d, want %d", c->in, rc, c->rc);
		if (c->rc == CHAT_IN_LINE)
			CHECK(out == NULL, "'%s': no output for a line", c->in);
		else if (c->out != NULL)
			CHECK(out != NULL && olen == strlen(c->out) && strcmp(out, c->out) == 0,
			    "'%s': got '%s', want '%s'", c->in, out ? out : "(null)", c->out);
		else
			CHECK(out != NULL && olen > 0, "'%s': an error text", c->in);
		free(out);
	}
	/* an escaped NUL is taken (the service neutralises it) */
	{
		static const char req[] = "{\"message\": \"a\\u0000b\"}";
		char *out;
		size_t olen;

		CHECK(chat_json_input(req, sizeof(req) - 1, &out, &olen) == CHAT_IN_MESSAGE &&
		    olen == 3 && memcmp(out, "a\0b", 3) == 0, "NUL inside a message");
		free(out);
	}
}

static void
test_utf8(void)
{
	static const struct {
		const char	*in;
		const char	*want;
	} cases[] = {
		{ "plain", "plain" },
		{ "\xc3\xa9", "\xc3\xa9" },
		{ "\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80" },	/* U+1F600 */
		{ "\xc0\xaf", "??" },			/* overlong '/' */
		{ "\xe0\x80\xaf", "???" },		/* overlong */
		{ "\xed\xa0\x80", "???" },		/* a surrogate */
		{ "\xf4\x90\x80\x80", "????" },		/* past U+10FFFF */
		{ "\xe2\x82", "??" },			/* cut short at the end */
		{ "\xe2\x82x", "??x" },			/* cut short by ASCII */
		{ "\x80\xbf", "??" },			/* lone continuations */
		{ "\xf8\x88\x80\x80\x80", "?????" },	/* five-byte forms */
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[16];
		size_t n = strlen(cases[i].in);

		CHECK(chat_utf8_clean(out, cases[i].in, n) == n, "length kept");
		out[n] = '\0';
		CHECK(strcmp(out, cases[i].want) == 0, "utf8 %zu: got '%s'", i, out);
	}
}

static void
test_names(void)
{
	CHECK(chat_valid_name("websock1", 8), "a room");
	CHECK(chat_valid_name("a.b-c_D9", 8), "every allowed kind");
	CHECK(!chat_valid_name("", 0), "empty");
	CHECK(!chat_valid_name("a b", 3), "a blank");
	CHECK(!chat_valid_name("a/b", 3), "a slash");
	CHECK(!chat_valid_name("<img>", 5), "markup");
	CHECK(chat_valid_name("abcdefghijklmnopqrstuvwxyz012345", 32), "32 bytes");
	CHECK(!chat_valid_name("abcdefghijklmnopqrstuvwxyz0123456", 33), "33 bytes");
}

int
main(void)
{
	test_names();
	test_render();
	test_codec_edges();
	test_input();
	test_utf8();
	return check_done();
}
