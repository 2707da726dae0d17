/*
 * libFuzzer harness for chat_event.c: the events workers exchange, their
 * two renderings, JSON requests, and the UTF-8 cleaner.
 *
 * The first input byte picks the part; the rest is its input:
 *   0  decode as the channel layer would deliver it, render both forms:
 *      the text is one "\r\n"-ended line, the JSON one object that
 *      parses, and an event that decodes encodes back to the same bytes
 *   1  a member's JSON request: every answer is a string without a stray
 *      NUL, a command starts with '/'
 *   2  the UTF-8 cleaner: its output is always a string jansson accepts,
 *      and valid input comes out unchanged
 *
 *   tests/fuzz/run 60          (builds and runs every harness)
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_event.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void
check_line(const char *out, size_t len, bool json)
{
	size_t i;

	if (out == NULL)
		return;		/* out of memory is allowed */
	if (len < 2 || out[len - 2] != '\r' || out[len - 1] != '\n')
		abort();
	for (i = 0; json && i < len - 2; i++)
		if (out[i] == '\r' || out[i] == '\n')
			abort();	/* one WebSocket message per object */
	if (json) {
		json_t *j = json_loadb(out, len - 2, JSON_ALLOW_NUL, NULL);

		if (j == NULL || !json_is_object(j))
			abort();
		json_decref(j);
	}
}

static void
events(const char *data, size_t size)
{
	struct chat_event ev;
	char *out, *again;
	size_t len, n;

	chat_event_decode(data, size, &ev);
	out = chat_event_text(&ev, "room", &len);
	check_line(out, len, false);
	free(out);
	out = chat_event_json(&ev, "room", &len);
	check_line(out, len, true);
	free(out);
	if (ev.kind == CHAT_NOTICE)
		return;
	if ((again = malloc(size + 1)) == NULL)
		return;
	n = chat_event_encode(again, size + 1, &ev);
	if (n != size || memcmp(again, data, size) != 0)
		abort();
	free(again);
}

static void
requests(const char *data, size_t size)
{
	char *out;
	size_t len;
	enum chat_input rc = chat_json_input(data, size, &out, &len);

	if (rc == CHAT_IN_LINE) {
		if (out != NULL)
			abort();
		return;
	}
	if (out == NULL)
		return;
	if (out[len] != '\0' || (rc != CHAT_IN_MESSAGE && strlen(out) != len))
		abort();
	if (rc == CHAT_IN_COMMAND && out[0] != '/')
		abort();
	free(out);
}

static void
utf8(const char *data, size_t size)
{
	char *buf = malloc(size + 1);
	json_t *j;

	if (buf == NULL)
		return;
	if (chat_utf8_clean(buf, data, size) != size)
		abort();
	if ((j = json_stringn(buf, size)) == NULL)
		abort();
	json_decref(j);
	/* what jansson takes as it is, the cleaner leaves alone */
	if ((j = json_stringn(data, size)) != NULL) {
		if (memcmp(buf, data, size) != 0)
			abort();
		json_decref(j);
	}
	free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data + 1;

	if (size == 0)
		return 0;
	switch (data[0] % 3) {
	case 0:
		events(p, size - 1);
		break;
	case 1:
		requests(p, size - 1);
		break;
	default:
		utf8(p, size - 1);
		break;
	}
	return 0;
}
