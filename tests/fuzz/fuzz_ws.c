/*
 * libFuzzer harness for the websocket codec (codec_ws.c, over http.c and
 * libwslay), with a fake session around it: conn_request answers like echo
 * ("quit" ends the session as conn.c does), conn_begin says a banner,
 * conn_write and
 * conn_write_locked append to the session's output bounded by max_output,
 * and everything the codec writes is kept as "the wire".
 *
 * Input layout:
 *   byte 0    bit 0: start with a valid handshake; bit 1: the service takes
 *             binary messages; bit 2: it serves plain HTTP; bit 3: the
 *             listener has allowed_origins; bit 4: pings every second
 *   byte 1    max_line: 16 + 8 * byte1
 *   byte 2    max_output: 1024 + 64 * byte2
 *   rest      operations, each an op byte and a length byte:
 *               op % 8 < 5  the next LEN bytes arrive from the client
 *               op % 8 == 5 LEN bytes of service output from "another
 *                           thread" (any bytes: invalid UTF-8, cut lines)
 *               op % 8 == 6 a tick LEN * 100 ms later
 *               op % 8 == 7 the server ends it (reason LEN % KILL_COUNT)
 *
 * At the end the wire is checked: an HTTP response first; after a 101 only
 * whole server frames (FIN set, no RSV, no mask, a known opcode), text
 * payloads valid UTF-8, a close payload of 0 or 2+ bytes with a valid code
 * and UTF-8 reason, and nothing after the close frame.  When the input has
 * client bytes only, they are fed again in one read: the frames sent back
 * must be the same, however the reads cut the frames.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "service.h"
#include "util.h"
#include "worker.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define WIRE_MAX	(1 << 20)

static struct fk_config cfg;
static struct fk_listener lis;
static struct worker wk;
static struct service svc;
static struct session sess;
static unsigned char *wire;
static size_t wire_len;
static char *allowed[] = { (char *)"https://a.example" };
static bool overflowed;		/* some output did not fit in max_output */

static bool
out_add(struct session *c, const void *buf, size_t n)
{
	if (c->out_full || c->out_len + n > (size_t)cfg.max_output) {
		c->out_full = true;
		overflowed = true;
		return false;
	}
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 256;
		char *nb;

		while (cap < c->out_len + n)
			cap *= 2;
		if ((nb = realloc(c->out, cap)) == NULL)
			abort();
		c->out = nb;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, buf, n);
	c->out_len += n;
	return true;
}

bool
conn_write_locked(struct session *c, const void *buf, size_t n)
{
	return out_add(c, buf, n);
}

bool
conn_write(struct session *c, const void *buf, size_t n)
{
	bool ok;

	pthread_mutex_lock(&c->out_lock);
	ok = out_add(c, buf, n);
	pthread_mutex_unlock(&c->out_lock);
	return ok;
}

void
conn_finish(struct session *c)
{
	c->closing = true;
	c->goodbye_said = true;
}

void
conn_alive(struct session *c)
{
	atomic_store(&c->last_line_ms, now_ms());
}

static void	say(struct session *, const void *, size_t);

/* the banner, once the handshake is answered */
void
conn_begin(struct session *c)
{
	if (c->begun)
		return;
	c->begun = true;
	say(c, "Hello\r\n", 7);
}

/* what a service's session_send does: through the codec, under out_lock */
static void
say(struct session *c, const void *buf, size_t n)
{
	bool ok;

	pthread_mutex_lock(&c->out_lock);
	ok = c->codec->output(c, buf, n);
	pthread_mutex_unlock(&c->out_lock);
	if (!ok) {
		int none = KILL_NONE;

		atomic_compare_exchange_strong(&c->kill, &none, KILL_OVERFLOW);
	}
}

int
conn_request(struct session *c, char *req, size_t len)
{
	if (req == NULL || req[len] != '\0' || len > (size_t)cfg.max_line)
		abort();
	if ((len == 4 && memcmp(req, "quit", 4) == 0) ||
	    (len == 4 && memcmp(req, "exit", 4) == 0)) {
		say(c, "Bye\r\n", 5);
		c->codec->goodbye(c, KILL_NONE);
		c->closing = true;
		return -1;
	}
	say(c, "Echo: ", 6);
	say(c, req, len);
	say(c, "\r\n", 2);
	return 0;
}

static void
fake_http(struct session *c, const struct http_request *r)
{
	(void)http_respond(c, 200, "text/html", NULL, r->path, strlen(r->path),
	    strcmp(r->method, "HEAD") == 0, r->keep_alive);
}

/* the socket "writes" what is queued */
static void
drain(struct session *c)
{
	pthread_mutex_lock(&c->out_lock);
	if (c->out_len > WIRE_MAX - wire_len)
		c->out_len = WIRE_MAX - wire_len;
	if (c->out_len > 0)
		memcpy(wire + wire_len, c->out, c->out_len);
	wire_len += c->out_len;
	c->out_len = 0;
	c->out_full = false;
	pthread_mutex_unlock(&c->out_lock);
}

static bool
utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char ch = s[i];
		size_t len, k;
		unsigned char lo = 0x80, hi = 0xbf;

		if (ch < 0x80) {
			i++;
			continue;
		}
		if (ch >= 0xc2 && ch <= 0xdf)
			len = 2;
		else if (ch >= 0xe0 && ch <= 0xef) {
			len = 3;
			lo = ch == 0xe0 ? 0xa0 : 0x80;
			hi = ch == 0xed ? 0x9f : 0xbf;
		} else if (ch >= 0xf0 && ch <= 0xf4) {
			len = 4;
			lo = ch == 0xf0 ? 0x90 : 0x80;
			hi = ch == 0xf4 ? 0x8f : 0xbf;
		} else
			return false;
		if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (k = 2; k < len; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return false;
		i += len;
	}
	return true;
}

static void
check_frames(const unsigned char *p, size_t n)
{
	bool closed = false;

	while (n > 0) {
		uint64_t len;
		size_t hl = 2;
		unsigned op;

		if (closed || n < 2)
			abort();
		if ((p[0] & 0xf0) != 0x80 || (p[1] & 0x80) != 0)
			abort();
		op = p[0] & 0x0f;
		len = p[1] & 0x7f;
		if (len == 126) {
			if (n < 4)
				abort();
			len = (uint64_t)p[2] << 8 | p[3];
			if (len < 126)
				abort();
			hl = 4;
		} else if (len == 127) {
			int i;

			if (n < 10)
				abort();
			for (len = 0, i = 0; i < 8; i++)
				len = len << 8 | p[2 + i];
			if (len <= 0xffff)
				abort();
			hl = 10;
		}
		if (len > n - hl)
			abort();
		switch (op) {
		case 1:
			if (!utf8_ok(p + hl, (size_t)len))
				abort();
			break;
		case 2:
			break;
		case 8: {
			unsigned code;

			closed = true;
			if (len == 1)
				abort();
			if (len == 0)
				break;
			code = (unsigned)p[hl] << 8 | p[hl + 1];
			if (code < 1000 || code >= 5000 || (code >= 1004 && code <= 1006) ||
			    (code >= 1012 && code < 3000))
				abort();
			if (!utf8_ok(p + hl + 2, (size_t)len - 2))
				abort();
			break;
		}
		case 9:
		case 10:
			if (len > 125)
				abort();
			break;
		default:
			abort();
		}
		p += hl + len;
		n -= hl + (size_t)len;
	}
}

static void
check_wire(void)
{
	const unsigned char *end;

	if (wire_len == 0)
		return;
	if (wire_len < 9 || memcmp(wire, "HTTP/1.1 ", 9) != 0)
		abort();
	if (memcmp(wire, "HTTP/1.1 101 ", 13) != 0)
		return;
	end = memmem(wire, wire_len, "\r\n\r\n", 4);
	if (end == NULL)
		abort();
	end += 4;
	check_frames(end, wire_len - (size_t)(end - wire));
}

static const char handshake[] =
    "GET /ws HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

/* conn.c hands input over in a buffer it owns: an exact-size heap copy */
static bool
feed(struct session *c, const void *data, size_t n)
{
	char *copy = malloc(n + 1);
	int rc;

	if (copy == NULL)
		abort();
	memcpy(copy, data, n);
	rc = c->codec->input(c, copy, n);
	free(copy);
	drain(c);
	return rc == 0 && !c->closing && atomic_load(&c->kill) == KILL_NONE;
}

/*
 * One session over the input.  whole: the client's bytes (the input ops
 * only) arrive in one read, to compare with the run in pieces.  Returns
 * whether the run used input ops only and ended without an overflow.
 */
static bool
session(const uint8_t *data, size_t size, bool whole)
{
	struct session *c = &sess;
	unsigned char *all = NULL;
	size_t i, nall = 0;
	uint64_t now;
	bool plain = true;

	wire_len = 0;
	overflowed = false;
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->out_lock, NULL);
	c->w = &wk;
	c->l = &lis;
	c->svc = &svc;
	c->codec = &codec_websocket;
	c->fd = -1;
	snprintf(c->peer, sizeof(c->peer), "127.0.0.1:1");
	atomic_store(&c->open, true);
	if (c->codec->open(c) != 0)
		abort();

	now = now_ms();
	if ((data[0] & 1) && !feed(c, handshake, sizeof(handshake) - 1))
		goto out;
	if (whole && (all = malloc(size)) == NULL)
		abort();
	for (i = 3; i + 1 < size; ) {
		unsigned op = data[i] % 8, len = data[i + 1];
		enum conn_kill k;

		i += 2;
		if (op < 5) {
			if (len > size - i)
				len = (unsigned)(size - i);
			if (len == 0)
				continue;
			if (whole) {
				memcpy(all + nall, data + i, len);
				nall += len;
			} else if (!feed(c, data + i, len))
				break;
			i += len;
			continue;
		}
		plain = false;
		if (whole)
			break;
		if (op == 5) {
			if (len > size - i)
				len = (unsigned)(size - i);
			say(c, data + i, len);
			drain(c);
			i += len;
		} else if (op == 6) {
			now += (uint64_t)len * 100;
			k = c->codec->tick(c, now);
			drain(c);
			if (k != KILL_NONE) {
				c->codec->goodbye(c, k);
				break;
			}
		} else {
			c->codec->goodbye(c, (enum conn_kill)(len % KILL_COUNT));
			break;
		}
		if (atomic_load(&c->kill) != KILL_NONE) {
			c->codec->goodbye(c, (enum conn_kill)atomic_load(&c->kill));
			break;
		}
	}
	if (whole && nall > 0)
		(void)feed(c, all, nall);
out:
	/* what was lost to a full queue depends on how the reads fell */
	if (overflowed || atomic_load(&c->kill) == KILL_OVERFLOW)
		plain = false;
	drain(c);
	c->codec->close(c);
	if (c->cstate != NULL)
		abort();
	free(c->out);
	free(all);
	pthread_mutex_destroy(&c->out_lock);
	check_wire();
	return plain;
}

/* The frames after a 101 (NULL when there was none). */
static const unsigned char *
frames_of(const unsigned char *w, size_t n, size_t *len)
{
	const unsigned char *end;

	if (n < 13 || memcmp(w, "HTTP/1.1 101 ", 13) != 0 ||
	    (end = memmem(w, n, "\r\n\r\n", 4)) == NULL)
		return NULL;
	end += 4;
	*len = n - (size_t)(end - w);
	return end;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char *first;
	static size_t first_len;
	const unsigned char *a, *b;
	size_t alen, blen;

	if (size < 3)
		return 0;
	if (wire == NULL) {
		if ((wire = malloc(WIRE_MAX)) == NULL ||
		    (first = malloc(WIRE_MAX)) == NULL)
			abort();
		log_set_level(LOG_ERR);	/* refused origins are logged */
	}
	cfg.max_line = 16 + 8 * data[1];
	cfg.max_output = 1024 + 64 * data[2];
	wk.cfg = &cfg;
	lis.max_header = 1024;
	lis.header_timeout = 5;
	lis.ping_interval = (data[0] & 16) ? 1 : 0;
	lis.allowed_origins = (data[0] & 8) ? allowed : NULL;
	lis.norigins = (data[0] & 8) ? 1 : 0;
	svc.name = "fuzz";
	svc.binary = (data[0] & 2) != 0;
	svc.http = (data[0] & 4) ? fake_http : NULL;

	if (!session(data, size, false))
		return 0;
	/* the same bytes in one read must give the same frames back */
	memcpy(first, wire, wire_len);
	first_len = wire_len;
	if (!session(data, size, true))
		return 0;
	a = frames_of(first, first_len, &alen);
	b = frames_of(wire, wire_len, &blen);
	if ((a == NULL) != (b == NULL) ||
	    (a != NULL && (alen != blen || memcmp(a, b, alen) != 0)))
		abort();
	return 0;
}
