/*
 * Chat room events: the compact form published between workers, and the
 * two forms members see (see chat_event.h).
 *
 * Encoded event: 0x1e, the kind byte, the nick, a NUL, the text.  Nicks
 * hold no NUL (they are checked names), the text may hold anything; the
 * channel layer carries the length.
 */
#include <ctype.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_event.h"

#define EVENT_MARK	0x1e
#define COMMAND_MAX	16	/* letters of a command name */

size_t
chat_event_encode(char *buf, size_t cap, const struct chat_event *ev)
{
	size_t nlen = strlen(ev->nick);
	size_t total = CHAT_EVENT_OVERHEAD + nlen + ev->text_len;

	if (total < nlen || cap < total)
		return 0;
	buf[0] = EVENT_MARK;
	buf[1] = (char)ev->kind;
	memcpy(buf + 2, ev->nick, nlen);
	buf[2 + nlen] = '\0';
	if (ev->text_len > 0)
		memcpy(buf + 3 + nlen, ev->text, ev->text_len);
	return total;
}

static bool
known_kind(char k)
{
	return k == CHAT_MESSAGE || k == CHAT_JOIN || k == CHAT_LEAVE || k == CHAT_NICK ||
	    k == CHAT_NOTICE;
}

void
chat_event_decode(const char *buf, size_t len, struct chat_event *ev)
{
	const char *nul;

	if (len >= CHAT_EVENT_OVERHEAD && buf[0] == EVENT_MARK && known_kind(buf[1]) &&
	    (nul = memchr(buf + 2, '\0', len - 2)) != NULL) {
		ev->kind = (enum chat_kind)buf[1];
		ev->nick = buf + 2;
		ev->text = nul + 1;
		ev->text_len = len - (size_t)(nul + 1 - buf);
		return;
	}
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	if (len >= 2 && buf[0] == '*' && buf[1] == ' ') {
		buf += 2;	/* the text form of a notice: rendered back the same */
		len -= 2;
	}
	ev->kind = CHAT_NOTICE;
	ev->nick = "";
	ev->text = buf;
	ev->text_len = len;
}

/* ---- text ---- */

/* printf into a fresh buffer of the right size */
static char * __attribute__((format(printf, 2, 3)))
fmt_alloc(size_t *len, const char *fmt, ...)
{
	va_list ap;
	char *out;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || (out = malloc((size_t)n + 1)) == NULL)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(out, (size_t)n + 1, fmt, ap);
	va_end(ap);
	*len = (size_t)n;
	return out;
}

char *
chat_event_text(const struct chat_event *ev, const char *room, size_t *len)
{
	int tl = (int)ev->text_len;

	switch (ev->kind) {
	case CHAT_MESSAGE:
		return fmt_alloc(len, "[%s] %.*s\r\n", ev->nick, tl, ev->text);
	case CHAT_JOIN:
		return fmt_alloc(len, "* %s joined %s\r\n", ev->nick, room);
	case CHAT_LEAVE:
		if (tl > 0)
			return fmt_alloc(len, "* %s left %s (%.*s)\r\n", ev->nick, room,
			    tl, ev->text);
		return fmt_alloc(len, "* %s left %s\r\n", ev->nick, room);
	case CHAT_NICK:
		return fmt_alloc(len, "* %s is now known as %.*s\r\n", ev->nick, tl,
		    ev->text);
	default:
		return fmt_alloc(len, "* %.*s\r\n", tl, ev->text);
	}
}

/* ---- JSON ---- */

size_t
chat_utf8_clean(char *dst, const char *src, size_t n)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		size_t need, k;
		uint32_t cp, min;

		if (c < 0x80) {
			dst[i] = (char)c;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1; cp = c & 0x1f; min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2; cp = c & 0x0f; min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3; cp = c & 0x07; min = 0x10000;
		} else {
			dst[i++] = '?';
			continue;
		}
		for (k = 1; k <= need && i + k < n && (s[i + k] & 0xc0) == 0x80; k++)
			cp = (cp << 6) | (s[i + k] & 0x3f);
		if (k <= need || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
			dst[i++] = '?';	/* the bytes after it get their own look */
			continue;
		}
		memcpy(dst + i, s + i, need + 1);
		i += need + 1;
	}
	return n;
}

/* A JSON string of any bytes, made valid UTF-8. */
static json_t *
jstr(const char *s, size_t n)
{
	char small[256], *buf = n <= sizeof(small) ? small : malloc(n);
	json_t *j;

	if (buf == NULL)
		return NULL;
	chat_utf8_clean(buf, s, n);
	j = json_stringn_nocheck(buf, n);
	if (buf != small)
		free(buf);
	return j;
}

/* Serialise compactly with "\r\n" after it, and drop the reference. */
static char *
dump_line(json_t *j, size_t *len)
{
	size_t n;
	char *out = NULL;

	if (j == NULL)
		return NULL;
	n = json_dumpb(j, NULL, 0, JSON_COMPACT);
	if (n > 0 && (out = malloc(n + 2)) != NULL) {
		json_dumpb(j, out, n, JSON_COMPACT);
		out[n] = '\r';
		out[n + 1] = '\n';
		*len = n + 2;
	}
	json_decref(j);
	return out;
}

/* json_object_set_new that tolerates a NULL value (out of memory) by
 * failing the whole object later */
static bool
put(json_t *o, const char *key, json_t *v)
{
	return v != NULL && json_object_set_new(o, key, v) == 0;
}

char *
chat_event_json(const struct chat_event *ev, const char *room, size_t *len)
{
	json_t *o = json_object(), *inner;
	bool ok = o != NULL;

	if (!ok)
		return NULL;
	switch (ev->kind) {
	case CHAT_MESSAGE:
		/* the shape a Django Channels room consumer sends, with who
		 * and where added */
		ok = (inner = json_object()) != NULL &&
		    put(inner, "message", jstr(ev->text, ev->text_len)) &&
		    put(inner, "nick", jstr(ev->nick, strlen(ev->nick))) &&
		    put(inner, "room", jstr(room, strlen(room)));
		ok = put(o, "payload", inner) && ok;
		break;
	case CHAT_JOIN:
	case CHAT_LEAVE:
		ok = put(o, "event", json_string(ev->kind == CHAT_JOIN ? "join" : "leave")) &&
		    put(o, "nick", jstr(ev->nick, strlen(ev->nick))) &&
		    put(o, "room", jstr(room, strlen(room)));
		if (ok && ev->kind == CHAT_LEAVE && ev->text_len > 0)
			ok = put(o, "reason", jstr(ev->text, ev->text_len));
		break;
	case CHAT_NICK:
		ok = put(o, "event", json_string("nick")) &&
		    put(o, "from", jstr(ev->nick, strlen(ev->nick))) &&
		    put(o, "nick", jstr(ev->text, ev->text_len)) &&
		    put(o, "room", jstr(room, strlen(room)));
		break;
	default:
		ok = put(o, "event", json_string("notice")) &&
		    put(o, "text", jstr(ev->text, ev->text_len)) &&
		    put(o, "room", jstr(room, strlen(room)));
		break;
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return dump_line(o, len);
}

bool
chat_valid_name(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > CHAT_NAME_MAX)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
			return false;
	return true;
}

/* ---- requests in JSON ---- */

static enum chat_input
input_error(const char *msg, char **out, size_t *outlen)
{
	*out = strdup(msg);
	*outlen = *out != NULL ? strlen(msg) : 0;
	return CHAT_IN_ERROR;
}

static bool
command_name(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > COMMAND_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
			return false;
	return true;
}

enum chat_input
chat_json_input(const char *req, size_t len, char **out, size_t *outlen)
{
	json_t *j, *msg, *cmd, *arg;
	enum chat_input rc;
	size_t i = 0;

	*out = NULL;
	*outlen = 0;
	while (i < len && (req[i] == ' ' || req[i] == '\t'))
		i++;
	if (i == len || req[i] != '{')
		return CHAT_IN_LINE;
	j = json_loadb(req, len, JSON_ALLOW_NUL, NULL);
	if (j == NULL || !json_is_object(j)) {
		json_decref(j);
		return CHAT_IN_LINE;
	}
	msg = json_object_get(j, "message");
	cmd = json_object_get(j, "command");
	arg = json_object_get(j, "arg");
	if (msg == NULL && cmd == NULL) {
		rc = CHAT_IN_LINE;
	} else if (msg != NULL && cmd != NULL) {
		rc = input_error("send \"message\" or \"command\", not both", out, outlen);
	} else if (msg != NULL) {
		if (!json_is_string(msg)) {
			rc = input_error("\"message\" must be a string", out, outlen);
		} else {
			size_t n = json_string_length(msg);

			rc = CHAT_IN_MESSAGE;
			if ((*out = malloc(n + 1)) != NULL) {
				memcpy(*out, json_string_value(msg), n);
				(*out)[n] = '\0';
				*outlen = n;
			}
		}
	} else {
		const char *name = json_is_string(cmd) ? json_string_value(cmd) : NULL;
		size_t nlen = name != NULL ? json_string_length(cmd) : 0;

		if (name != NULL && nlen > 0 && name[0] == '/') {
			name++;
			nlen--;
		}
		if (name == NULL || !command_name(name, nlen)) {
			rc = input_error("\"command\" must be a command name such as \"nick\", "
			    "\"join\", \"who\", \"rooms\" or \"help\"", out, outlen);
		} else if (arg != NULL && !json_is_string(arg)) {
			rc = input_error("\"arg\" must be a string", out, outlen);
		} else {
			size_t alen = arg != NULL ? json_string_length(arg) : 0;
			size_t n = 1 + nlen + (alen > 0 ? 1 + alen : 0);

			rc = CHAT_IN_COMMAND;
			if ((*out = malloc(n + 1)) != NULL) {
				(*out)[0] = '/';
				memcpy(*out + 1, name, nlen);
				if (alen > 0) {
					(*out)[1 + nlen] = ' ';
					memcpy(*out + 2 + nlen, json_string_value(arg), alen);
				}
				(*out)[n] = '\0';
				*outlen = n;
			}
		}
	}
	json_decref(j);
	return rc;
}
