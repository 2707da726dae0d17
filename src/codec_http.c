/*
 * The http codec: keep-alive HTTP/1.1 request heads (http.c), each handed
 * to the service's http callback, which answers with http_respond().
 *
 * Requests without a body only: a body is refused (413 for a length, 501
 * for chunked) and the connection closed, as is a malformed head (400) or
 * one larger than the listener's max_header (431).  A head must be complete
 * within header_timeout seconds of its first byte.
 *
 * Pipelined requests are answered in order.  A client may send many at once
 * and read the answers later, so they are taken a few at a time: once the
 * queued answers reach a quarter of max_output, the rest waits (bounded) in
 * the codec until they are flushed, and the session's tick resumes it.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"
#include "worker.h"

/* bytes of pipelined requests waiting for earlier answers to drain */
#define HELD_MAX	(64 * 1024)
/* a deadline when there is nothing to wait for */
#define NO_DEADLINE	0

struct http_cstate {
	struct http_parser_state *p;
	uint64_t	 head_deadline;	/* ms; NO_DEADLINE while between requests */
	char		*held;		/* unparsed requests (pipelining) */
	size_t		 held_len;
};

static int
http_open(struct session *c)
{
	struct http_cstate *hs = calloc(1, sizeof(*hs));

	if (hs == NULL)
		return -1;
	hs->p = http_head_new((size_t)c->l->max_header);
	if (hs->p == NULL) {
		free(hs);
		return -1;
	}
	c->cstate = hs;
	return 0;
}

static void
http_close(struct session *c)
{
	struct http_cstate *hs = c->cstate;

	if (hs == NULL)
		return;
	http_head_free(hs->p);
	free(hs->held);
	free(hs);
}

/* Refuse the request: an answer, then close once it is flushed. */
static void
refuse(struct session *c, int status)
{
	char body[96];
	int n;

	n = snprintf(body, sizeof(body), "%d %s\n", status, http_reason(status));
	http_respond(c, status, "text/plain; charset=utf-8", NULL, body,
	    n > 0 ? (size_t)n : 0, false, false);
	conn_finish(c);
}

/* Bytes of answers queued and not yet sent. */
static size_t
queued(struct session *c)
{
	size_t n;

	pthread_mutex_lock(&c->out_lock);
	n = c->out_len - c->out_off;
	pthread_mutex_unlock(&c->out_lock);
	return n;
}

static bool
room_for_more(struct session *c)
{
	return queued(c) < (size_t)c->w->cfg->max_output / 4;
}

/* The next time the codec wants its tick: a head's deadline, or soon when
 * requests are held. */
static void
arm_tick(struct session *c, struct http_cstate *hs, uint64_t now)
{
	uint64_t t = hs->head_deadline;

	if (hs->held_len > 0 && (t == NO_DEADLINE || t > now))
		t = now;
	atomic_store_explicit(&c->tick_ms, t, memory_order_relaxed);
}

/*
 * Parse and answer what data holds, while the answers queued leave room.
 * Returns the bytes taken (the rest is for later), or -1 when the session
 * is closing.  *served counts the requests answered.
 */
static ssize_t
serve(struct session *c, struct http_cstate *hs, const char *data, size_t n,
    unsigned *served)
{
	size_t taken = 0;

	while (taken < n) {
		struct http_request *req;
		size_t used;
		int rc;

		if (c->closing || atomic_load_explicit(&c->kill, memory_order_relaxed))
			return -1;
		if (http_head_pending(hs->p) == 0 && !room_for_more(c))
			break;		/* held until the answers drain */
		rc = http_head_feed(hs->p, data + taken, n - taken, &used, &req);
		if (rc < 0) {
			refuse(c, -rc);
			return -1;
		}
		taken += used;
		if (rc == 0) {
			if (hs->head_deadline == NO_DEADLINE && http_head_pending(hs->p) > 0)
				hs->head_deadline = now_ms() +
				    (uint64_t)c->l->header_timeout * 1000;
			break;
		}
		hs->head_deadline = NO_DEADLINE;
		(*served)++;
		atomic_store_explicit(&c->last_line_ms, now_ms(), memory_order_relaxed);
		if (req->content_length > 0) {
			refuse(c, 413);
			return -1;
		}
		if (req->chunked) {
			refuse(c, 501);
			return -1;
		}
		if (c->svc->http == NULL)
			http_respond(c, 404, "text/plain; charset=utf-8", NULL,
			    "404 Not Found\n", 14, strcmp(req->method, "HEAD") == 0,
			    req->keep_alive);
		else
			c->svc->http(c, req);
		if (!req->keep_alive) {
			conn_finish(c);
			return -1;
		}
		http_head_reset(hs->p);
	}
	return (ssize_t)taken;
}

/* Keep what was not taken: after what is already held. */
static int
hold(struct session *c, struct http_cstate *hs, const char *data, size_t n)
{
	char *nb;

	if (n == 0)
		return 0;
	if (hs->held_len + n > HELD_MAX) {
		refuse(c, 429);
		return -1;
	}
	nb = realloc(hs->held, hs->held_len + n);
	if (nb == NULL) {
		refuse(c, 503);
		return -1;
	}
	memcpy(nb + hs->held_len, data, n);
	hs->held = nb;
	hs->held_len += n;
	return 0;
}

/* Serve the held requests first; true when none are left. */
static int
serve_held(struct session *c, struct http_cstate *hs, unsigned *served)
{
	ssize_t t;

	if (hs->held_len == 0)
		return 0;
	t = serve(c, hs, hs->held, hs->held_len, served);
	if (t < 0)
		return -1;
	memmove(hs->held, hs->held + t, hs->held_len - (size_t)t);
	hs->held_len -= (size_t)t;
	if (hs->held_len == 0) {
		free(hs->held);
		hs->held = NULL;
	}
	return 0;
}

static int
http_input(struct session *c, char *data, size_t n)
{
	struct http_cstate *hs = c->cstate;
	unsigned served = 0;
	ssize_t t = 0;
	int rc = 0;

	if (serve_held(c, hs, &served) < 0)
		rc = -1;
	else if (hs->held_len == 0 && (t = serve(c, hs, data, n, &served)) < 0)
		rc = -1;
	else if (hold(c, hs, data + t, n - (size_t)t) < 0)
		rc = -1;
	c->lines += served;	/* counted as requests by conn.c */
	arm_tick(c, hs, now_ms());
	return rc;
}

static enum conn_kill
http_tick(struct session *c, uint64_t now)
{
	struct http_cstate *hs = c->cstate;
	unsigned served = 0;

	if (hs->head_deadline != NO_DEADLINE && now >= hs->head_deadline)
		return KILL_IDLE;	/* the goodbye says 408 */
	if (serve_held(c, hs, &served) < 0)
		return KILL_NONE;	/* refused: closing once that is sent */
	if (served > 0) {
		struct sb_slot *sb = c->w->sb;

		/* conn.c counts what input() serves; these it does not see */
		atomic_fetch_add_explicit(&sb->requests, served, memory_order_relaxed);
		atomic_fetch_add_explicit(&sb->proto_requests[c->l->protocol], served,
		    memory_order_relaxed);
		sb_count(&SESSION_LC(c)->requests, served);
	}
	arm_tick(c, hs, now);
	return KILL_NONE;
}

/* The server ends the session: a client in the middle of a head is told. */
static void
http_goodbye(struct session *c, enum conn_kill why)
{
	struct http_cstate *hs = c->cstate;

	if (hs == NULL || (http_head_pending(hs->p) == 0 && hs->held_len == 0))
		return;		/* between requests: a plain close */
	if (why == KILL_IDLE)
		refuse(c, 408);
	else if (why == KILL_SHUTDOWN || why == KILL_RETIRE)
		refuse(c, 503);
}

const struct codec codec_http = {
	.name = "http",
	.open = http_open,
	.input = http_input,
	.goodbye = http_goodbye,
	.tick = http_tick,
	.close = http_close,
};
