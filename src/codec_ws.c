/*
 * The websocket codec: an HTTP/1.1 Upgrade handshake (http.c), then RFC 6455
 * frames.  One text message is one request; each reply line the service
 * writes ("...\r\n") goes back as one text message.
 *
 * Incoming frames go through libwslay's event API, fed from the bytes conn.c
 * hands to input (its recv callback reads them from that buffer and says
 * WOULDBLOCK when they are used up).  wslay checks masking, RSV bits,
 * opcodes, continuation order, control frame size and fragmentation,
 * UTF-8 of text across fragments, the message size (max_line), close codes,
 * and answers pings and closes.  What it does not do right is done here:
 *
 *  - a frame it refuses while parsing the header (a control frame over 125
 *    bytes or fragmented, a length not in its shortest form) makes it queue
 *    a close without a code: such a close is not sent, 1002 is;
 *  - a close with a 1-byte payload passes as one without a code: 1002;
 *  - it checks the close reason's UTF-8 by chunks of the frame, skipping
 *    two bytes of each: control frames are handed to it whole (see struct
 *    tracker), and the reason is checked again here as a whole (1007);
 *  - a peer's close is answered from here with its code (the reason is not
 *    echoed), so that the checks above come first.
 *
 * Only the session's owner calls wslay.  Service output comes from any
 * thread through output() with out_lock held and is framed here, never by
 * wslay, so frames from different threads never interleave: each is appended
 * whole.  wslay's own replies (pongs, a close) are flushed with out_lock held
 * for the same reason.
 */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <wslay/wslay.h>

#include "codec.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "service.h"
#include "util.h"
#include "worker.h"

#define WS_GUID			"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_DEFAULT_HEAD		8192
#define WS_KEY_LEN		24	/* base64 of 16 bytes */
#define WS_NO_CLOSE		(-1)
#define WS_EMPTY_CLOSE		0	/* a close frame without a code */
#define WS_KEEP_CAP		4096	/* larger buffers are freed once used */

enum ws_phase { PH_HTTP, PH_WS };

/*
 * Frame boundaries in the client's byte stream (headers only; payloads are
 * wslay's).  wslay checks a close reason's UTF-8 chunk by chunk, restarting
 * two bytes into each chunk, so a close frame it gets in two pieces (cut by
 * a read, or by the end of its 4 KiB buffer) can fail a valid reason.  So
 * control frames are handed over whole: held back until all of one has
 * arrived, and never cut by the end of what a recv callback returns.
 */
#define WS_CTL_MAX	(2 + 4 + 125)	/* a valid control frame, masked */

struct tracker {
	unsigned char	 hdr[14];	/* the header being read */
	size_t		 hlen, hneed;	/* hlen 0 and rem 0: at a frame's start */
	uint64_t	 rem;		/* payload bytes left of this frame */
	bool		 in_msg;	/* a fragmented data message is under way */
};

/*
 * A session keeps no wslay context (about 10 KiB with its buffers) between
 * the reads that bring it frames: one is made for a read and given back
 * when the read ends at a message boundary, so ten thousand idle browsers
 * cost their small state only, and a busy worker holds about one context
 * per pool thread.  A message left unfinished keeps its context until it
 * ends (or the session does, at idle_timeout at the latest).
 */

struct ws {
	enum ws_phase		 phase;
	bool			 done;		/* we ended it: input is ignored */
	bool			 stop;		/* conn_request said the session ends */
	bool			 timed_out;	/* the request head took too long */
	int			 reply_close;	/* close code to answer with, or WS_NO_CLOSE */
	bool			 peer_closed;	/* reply_close answers a valid close */
	struct http_parser_state *hp;
	uint64_t		 head_start_ms;

	wslay_event_context_ptr	 ctx;
	const char		*in;		/* input() bytes for the recv callback */
	size_t			 in_len;
	struct tracker		 trk;		/* where the frames handed to wslay end */
	unsigned char		 carry[WS_CTL_MAX]; /* a control frame not all here */
	size_t			 carry_len;
	uint64_t		 last_rx_ms;	/* a frame came in */
	uint64_t		 ping_sent_ms;	/* 0: no ping outstanding */

	/* under c->out_lock */
	bool			 closed;	/* our close frame is queued */
	bool			 http_only;	/* plain HTTP was served: no frames */
	bool			 bin_active;	/* replies go to bin (a binary request) */
	char			*pend;		/* a partial reply line, or all output
						 * before the handshake */
	size_t			 pend_len, pend_cap;
	char			*bin;
	size_t			 bin_len, bin_cap;
	char			*frame;		/* one frame being written */
	size_t			 frame_cap;
	unsigned char		 ctl[14 + 125];	/* wslay's frame: header, payload */
	size_t			 ctl_len;
	struct session		*c;
};

/* Output failed (over max_output): the session goes as too slow. */
static void
overflow(struct session *c)
{
	int none = KILL_NONE;

	atomic_compare_exchange_strong(&c->kill, &none, (int)KILL_OVERFLOW);
}

static size_t
max_output(const struct session *c)
{
	return (size_t)c->w->cfg->max_output;
}

/* ---- UTF-8 ---- */

/* Length of the well-formed UTF-8 sequence at s (RFC 3629), 0 if none. */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;	/* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;	/* up to U+10FFFF */
	} else
		return 0;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

static bool
utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0, k;

	while (i < n) {
		if ((k = utf8_seq(s + i, n - i)) == 0)
			return false;
		i += k;
	}
	return true;
}

static bool
grow(char **buf, size_t *cap, size_t need, size_t max)
{
	size_t ncap;
	char *nb;

	if (need <= *cap)
		return true;
	if (need > max)
		return false;
	ncap = *cap ? *cap : 256;
	while (ncap < need)
		ncap *= 2;
	if (ncap > max)
		ncap = max;
	if ((nb = realloc(*buf, ncap)) == NULL)
		return false;
	*buf = nb;
	*cap = ncap;
	return true;
}

/* ---- frames we write ourselves (server frames are not masked) ---- */

static size_t
frame_header(unsigned char *h, unsigned opcode, uint64_t len)
{
	int i;

	h[0] = (unsigned char)(0x80 | opcode);
	if (len < 126) {
		h[1] = (unsigned char)len;
		return 2;
	}
	if (len <= 0xffff) {
		h[1] = 126;
		h[2] = (unsigned char)(len >> 8);
		h[3] = (unsigned char)len;
		return 4;
	}
	h[1] = 127;
	for (i = 0; i < 8; i++)
		h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
	return 10;
}

/*
 * One whole frame in a single append, so that a queue that fills up never
 * holds half a frame; a text payload has invalid UTF-8 replaced with U+FFFD.
 * out_lock held.
 */
static bool
emit(struct session *c, unsigned opcode, const void *data, size_t n, bool text)
{
	struct ws *st = c->cstate;
	const unsigned char *u = data;
	unsigned char *q;
	size_t i, k, hl, len = n;
	bool ok;

	if (text) {
		for (i = 0, len = 0; i < n; i += k) {
			k = utf8_seq(u + i, n - i);
			len += k ? k : 3;
			if (k == 0)
				k = 1;
		}
	}
	if (!grow(&st->frame, &st->frame_cap, len + 10, max_output(c) + 10))
		return false;
	q = (unsigned char *)st->frame;
	hl = frame_header(q, opcode, len);
	if (!text || len == n) {
		if (n > 0)
			memcpy(q + hl, data, n);
	} else {
		q += hl;
		for (i = 0; i < n; i += k) {
			if ((k = utf8_seq(u + i, n - i)) == 0) {
				memcpy(q, "\xef\xbf\xbd", 3);
				q += 3;
				k = 1;
			} else {
				memcpy(q, u + i, k);
				q += k;
			}
		}
	}
	ok = conn_write_locked(c, st->frame, hl + len);
	if (st->frame_cap > WS_KEEP_CAP) {
		free(st->frame);
		st->frame = NULL;
		st->frame_cap = 0;
	}
	return ok;
}

static bool
write_text(struct session *c, const char *s, size_t n)
{
	return emit(c, WSLAY_TEXT_FRAME, s, n, true);
}

static bool
write_frame(struct session *c, unsigned opcode, const void *p, size_t n)
{
	return emit(c, opcode, p, n, false);
}

/* Binary replies collected while a binary request ran; out_lock held. */
static bool
flush_bin(struct session *c, struct ws *st)
{
	size_t n = st->bin_len;
	bool ok;

	st->bin_active = false;
	st->bin_len = 0;
	if (n >= 2 && st->bin[n - 2] == '\r' && st->bin[n - 1] == '\n')
		n -= 2;
	ok = write_frame(c, WSLAY_BINARY_FRAME, st->bin, n);
	if (st->bin_cap > WS_KEEP_CAP) {
		free(st->bin);
		st->bin = NULL;
		st->bin_cap = 0;
	}
	return ok;
}

/*
 * Queue our close frame (code WS_EMPTY_CLOSE: without a code); nothing is
 * framed after it.
 */
static void
send_close(struct session *c, struct ws *st, int code, const char *reason)
{
	unsigned char p[125];
	size_t n = 0;

	pthread_mutex_lock(&c->out_lock);
	if (!st->closed) {
		if (st->bin_active)
			(void)flush_bin(c, st);
		if (code != WS_EMPTY_CLOSE) {
			p[0] = (unsigned char)(code >> 8);
			p[1] = (unsigned char)code;
			n = 2;
			if (reason != NULL) {
				size_t rl = strlen(reason);

				if (rl > sizeof(p) - 2)
					rl = sizeof(p) - 2;
				memcpy(p + 2, reason, rl);
				n += rl;
			}
		}
		(void)write_frame(c, WSLAY_CONNECTION_CLOSE, p, n);
		st->closed = true;
	}
	pthread_mutex_unlock(&c->out_lock);
}

/* ---- service output: cut at "\r\n", one line one message ---- */

/* Frame every whole line of buf; returns the bytes used, or -1. */
static ssize_t
frame_lines(struct session *c, const char *buf, size_t n)
{
	const char *p = buf, *end = buf + n, *crlf;

	while (p < end && (crlf = memmem(p, (size_t)(end - p), "\r\n", 2)) != NULL) {
		if (!write_text(c, p, (size_t)(crlf - p)))
			return -1;
		p = crlf + 2;
	}
	return p - buf;
}

/* The lines held in pend (after the handshake, or a partial one). */
static bool
frame_pend(struct session *c, struct ws *st)
{
	ssize_t used = frame_lines(c, st->pend, st->pend_len);

	if (used < 0)
		return false;
	memmove(st->pend, st->pend + used, st->pend_len - (size_t)used);
	st->pend_len -= (size_t)used;
	if (st->pend_len == 0 && st->pend_cap > WS_KEEP_CAP) {
		free(st->pend);
		st->pend = NULL;
		st->pend_cap = 0;
	}
	return true;
}

static bool
ws_output(struct session *c, const char *buf, size_t n)
{
	struct ws *st = c->cstate;
	ssize_t used;

	if (st == NULL || st->closed || st->http_only || n == 0)
		return true;
	if (st->bin_active) {
		if (!grow(&st->bin, &st->bin_cap, st->bin_len + n, max_output(c)))
			return false;
		memcpy(st->bin + st->bin_len, buf, n);
		st->bin_len += n;
		return true;
	}
	if (st->phase != PH_WS || st->pend_len > 0) {
		if (!grow(&st->pend, &st->pend_cap, st->pend_len + n, max_output(c)))
			return false;
		memcpy(st->pend + st->pend_len, buf, n);
		st->pend_len += n;
		return st->phase != PH_WS || frame_pend(c, st);
	}
	/* nothing held: frame in place, keep only an unfinished line */
	if ((used = frame_lines(c, buf, n)) < 0)
		return false;
	if ((size_t)used < n) {
		if (!grow(&st->pend, &st->pend_cap, n - (size_t)used, max_output(c)))
			return false;
		memcpy(st->pend, buf + used, n - (size_t)used);
		st->pend_len = n - (size_t)used;
	}
	return true;
}

/* ---- wslay's side ---- */

/* Header bytes of a frame whose second byte is b1. */
static size_t
hdr_len(unsigned char b1)
{
	unsigned len7 = b1 & 0x7f;

	return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((b1 & 0x80) ? 4 : 0);
}

/* The payload length in a complete header. */
static uint64_t
hdr_payload(const unsigned char *h)
{
	unsigned len7 = h[1] & 0x7f;
	uint64_t len = 0;
	size_t i;

	if (len7 < 126)
		return len7;
	for (i = 0; i < (len7 == 126 ? 2u : 8u); i++)
		len = len << 8 | h[2 + i];
	return len;
}

/* A data frame's FIN bit says whether a message is left unfinished. */
static void
trk_header(struct tracker *t, unsigned char b0)
{
	if ((b0 & 0x0f) < 8)
		t->in_msg = (b0 & 0x80) == 0;
}

/* At a message boundary, with nothing of a frame half read? */
static bool
trk_idle(const struct tracker *t)
{
	return t->hlen == 0 && t->rem == 0 && !t->in_msg;
}

/* t moves over n bytes of the stream. */
static void
trk_advance(struct tracker *t, const unsigned char *p, size_t n)
{
	while (n > 0) {
		if (t->rem > 0) {
			size_t k = t->rem < n ? (size_t)t->rem : n;

			t->rem -= k;
			p += k;
			n -= k;
			continue;
		}
		if (t->hlen == 0 && n >= 2 && n >= hdr_len(p[1])) {
			/* a whole header here */
			size_t hl = hdr_len(p[1]);

			t->rem = hdr_payload(p);
			trk_header(t, p[0]);
			p += hl;
			n -= hl;
			continue;
		}
		/* a header cut between two reads: byte by byte */
		t->hdr[t->hlen++] = *p++;
		n--;
		if (t->hlen == 2)
			t->hneed = hdr_len(t->hdr[1]);
		if (t->hlen >= 2 && t->hlen == t->hneed) {
			t->rem = hdr_payload(t->hdr);
			trk_header(t, t->hdr[0]);
			t->hlen = 0;
		}
	}
}

/*
 * How many of the next n bytes may go to wslay: all, or up to the start
 * of a control frame that does not end within them.
 */
static size_t
trk_limit(const struct tracker *t0, const unsigned char *p, size_t n)
{
	struct tracker t = *t0;
	size_t pos = 0;

	/* the rest of the frame under way */
	while (pos < n && (t.hlen > 0 || t.rem > 0)) {
		size_t k = t.rem > 0 ? (t.rem < n - pos ? (size_t)t.rem : n - pos) : 1;

		trk_advance(&t, p + pos, k);
		pos += k;
	}
	/* whole frames from here on */
	while (pos < n) {
		size_t hl;
		uint64_t plen;

		if ((p[pos] & 0x80) != 0 && (p[pos] & 0x0f) >= 8) {
			if (pos + 1 >= n)
				return pos;
			/* one over 125 bytes is refused by its header anyway */
			if ((p[pos + 1] & 0x7f) <= 125 &&
			    pos + hdr_len(p[pos + 1]) + (p[pos + 1] & 0x7f) > n)
				return pos;
		}
		if (n - pos < 2 || n - pos < (hl = hdr_len(p[pos + 1])))
			return n;	/* the start of a data frame's header */
		plen = hdr_payload(p + pos);
		if (plen >= n - pos - hl)
			return n;
		pos += hl + (size_t)plen;
	}
	return n;
}

/*
 * Bytes from p to the end of the frame under way (its header, while that
 * is incomplete), at most n: wslay is handed one frame at a time, so that
 * when a message's work is offloaded (the session is held) wslay holds no
 * later frame that it would go on to deliver.
 */
static size_t
trk_frame_left(const struct tracker *t, const unsigned char *p, size_t n)
{
	size_t hl;
	uint64_t left;

	if (t->hlen > 0)
		left = t->hlen >= 2 ? t->hneed - t->hlen : 1;
	else if (t->rem > 0)
		left = t->rem;
	else if (n < 2 || n < (hl = hdr_len(p[1])))
		left = n;
	else if ((left = hdr_payload(p)) >= n)
		left = n;	/* (a length near 2^64 must not wrap around) */
	else
		left += hl;
	return left < n ? (size_t)left : n;
}

static ssize_t
ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
    void *arg)
{
	struct ws *st = arg;

	const unsigned char *in = (const unsigned char *)st->in;
	size_t n;

	(void)flags;
	if (atomic_load(&st->c->held)) {
		/* a request's work is offloaded: the rest waits in conn.c */
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (len > st->in_len)
		len = st->in_len;
	len = trk_frame_left(&st->trk, in, len);
	n = trk_limit(&st->trk, in, len);
	if (n == 0 && len > 0 && len < st->in_len &&
	    trk_limit(&st->trk, in, st->in_len) > 0)
		n = len;	/* whole but bigger than wslay's room: cut it */
	if (n == 0) {
		/* nothing, or only the start of a control frame: wait */
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	memcpy(buf, in, n);
	trk_advance(&st->trk, in, n);
	st->in += n;
	st->in_len -= n;
	return (ssize_t)n;
}

/* wslay's pongs and closes; called from the owner with out_lock held */
static ssize_t
ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
    int flags, void *arg)
{
	struct ws *st = arg;

	/*
	 * wslay sends a header, then its payload: append them together.  It
	 * sends only control frames here, so both fit in ctl.
	 */
	if (len > sizeof(st->ctl) - st->ctl_len) {
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	memcpy(st->ctl + st->ctl_len, data, len);
	st->ctl_len += len;
	if ((flags & WSLAY_MSG_MORE) == 0) {
		bool ok = conn_write_locked(st->c, st->ctl, st->ctl_len);

		st->ctl_len = 0;
		if (!ok) {
			wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
			return -1;
		}
	}
	return (ssize_t)len;
}

static void
ws_frame_start_cb(wslay_event_context_ptr ctx,
    const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
	struct ws *st = user;

	(void)ctx;
	(void)arg;
	/* any frame, a pong too, shows the peer is there */
	st->last_rx_ms = now_ms();
	st->ping_sent_ms = 0;
	conn_alive(st->c);
}

static void	flush_wslay(struct session *, struct ws *, bool);

static void
ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
    void *user)
{
	struct ws *st = user;
	struct session *c = st->c;
	char *req;
	bool ok;
	int rc;

	if (st->stop || st->reply_close != WS_NO_CLOSE)
		return;
	switch (arg->opcode) {
	case WSLAY_TEXT_FRAME:
		if (arg->msg_length == 0)
			return;
		/* wslay holds messages to max_line (1009 past it); the
		 * service may write into its copy, NUL-ended */
		if ((req = malloc(arg->msg_length + 1)) == NULL) {
			overflow(c);
			return;
		}
		memcpy(req, arg->msg, arg->msg_length);
		req[arg->msg_length] = '\0';
		rc = conn_request(c, req, arg->msg_length);
		free(req);
		if (rc < 0 && !atomic_load(&c->held)) {
			st->stop = true;
			wslay_event_shutdown_read(ctx);
		}
		return;
	case WSLAY_BINARY_FRAME:
		if (!c->svc->binary) {
			st->reply_close = 1003;
			wslay_event_shutdown_read(ctx);
			return;
		}
		if (arg->msg_length == 0)
			return;
		if ((req = malloc(arg->msg_length + 1)) == NULL) {
			overflow(c);
			return;
		}
		memcpy(req, arg->msg, arg->msg_length);
		req[arg->msg_length] = '\0';
		pthread_mutex_lock(&c->out_lock);
		st->bin_active = !st->closed;
		st->bin_len = 0;
		pthread_mutex_unlock(&c->out_lock);
		rc = conn_request(c, req, arg->msg_length);
		free(req);
		pthread_mutex_lock(&c->out_lock);
		ok = !st->bin_active || flush_bin(c, st);
		pthread_mutex_unlock(&c->out_lock);
		if (!ok)
			overflow(c);
		if (rc < 0 && !atomic_load(&c->held)) {
			st->stop = true;
			wslay_event_shutdown_read(ctx);
		}
		return;
	case WSLAY_CONNECTION_CLOSE:
		/* wslay has checked the code (when there is one) */
		if (arg->msg_length == 1)
			st->reply_close = 1002;
		else if (arg->msg_length > 2 &&
		    !utf8_valid(arg->msg + 2, arg->msg_length - 2))
			st->reply_close = 1007;
		else if (arg->msg_length == 0)
			st->reply_close = WS_EMPTY_CLOSE;
		else
			st->reply_close = arg->status_code;
		/* answering a good close is no error of the peer's */
		st->peer_closed = st->reply_close != 1002 && st->reply_close != 1007;
		return;
	case WSLAY_PING:
		/* wslay queued the pong: it goes out now, before the replies
		 * to the rest of this batch (a fragmented message, say) */
		flush_wslay(c, st, false);
		return;
	default:
		return;
	}
}

static const struct wslay_event_callbacks ws_callbacks = {
	.recv_callback = ws_recv_cb,
	.send_callback = ws_send_cb,
	.on_frame_recv_start_callback = ws_frame_start_cb,
	.on_msg_recv_callback = ws_msg_cb,
};

/* Send what wslay queued (pongs; a close it decided on) with out_lock held. */
static void
flush_wslay(struct session *c, struct ws *st, bool closing)
{
	pthread_mutex_lock(&c->out_lock);
	if (!st->closed) {
		(void)wslay_event_send(st->ctx);
		if (closing || wslay_event_get_close_sent(st->ctx))
			st->closed = true;
	}
	pthread_mutex_unlock(&c->out_lock);
}

/* We are done and the client too: close once the output is flushed. */
static void
finish(struct session *c, struct ws *st)
{
	st->done = true;
	conn_finish(c);
}

/*
 * The client broke the protocol; the answer (a status, a close frame) is
 * queued.  Closed as a kill, which half-closes and reads what the client
 * still sends, so that its data is not met with a reset that would throw
 * the answer away before it is read.
 */
static void
fail(struct session *c, struct ws *st)
{
	int none = KILL_NONE;

	st->done = true;
	atomic_compare_exchange_strong(&c->kill, &none, (int)KILL_PROTOCOL);
}

static void	schedule(struct session *, struct ws *);

/* wslay's state for the frames of one session, made when they come. */
static bool
ctx_make(struct session *c, struct ws *st)
{
	if (st->ctx != NULL)
		return true;
	if (wslay_event_context_server_init(&st->ctx, &ws_callbacks, st) != 0) {
		st->ctx = NULL;
		return false;
	}
	wslay_event_config_set_max_recv_msg_length(st->ctx,
	    (uint64_t)c->w->cfg->max_line);
	return true;
}

/* At a message boundary with nothing queued: the wslay state can go. */
static bool
ctx_idle(const struct ws *st)
{
	return st->ctx != NULL && trk_idle(&st->trk) && st->carry_len == 0 &&
	    !st->closed && wslay_event_get_read_enabled(st->ctx) &&
	    wslay_event_get_queued_msg_count(st->ctx) == 0;
}

static void
ctx_trim(struct session *c, struct ws *st)
{
	wslay_event_context_free(st->ctx);
	st->ctx = NULL;
	pthread_mutex_lock(&c->out_lock);
	if (st->frame_cap > 0 && !st->bin_active) {
		free(st->frame);
		st->frame = NULL;
		st->frame_cap = 0;
	}
	pthread_mutex_unlock(&c->out_lock);
}

/*
 * Frames to wslay.  Returns 0, or -1 when the session ends or is held; when
 * held, *used says how many of the n bytes were taken.
 */
static int
ws_frames(struct session *c, struct ws *st, char *data, size_t n, size_t *used)
{
	char *joined = NULL;
	size_t carried = st->carry_len;
	int r;

	*used = n;
	if (!ctx_make(c, st)) {
		send_close(c, st, 1011, NULL);
		fail(c, st);
		return -1;
	}

	if (st->carry_len > 0) {
		/* the start of a control frame came with the last read */
		if ((joined = malloc(st->carry_len + n)) == NULL) {
			send_close(c, st, 1011, NULL);
			fail(c, st);
			return -1;
		}
		memcpy(joined, st->carry, st->carry_len);
		memcpy(joined + st->carry_len, data, n);
		data = joined;
		n += st->carry_len;
		st->carry_len = 0;
	}
	st->in = data;
	st->in_len = n;
	r = wslay_event_recv(st->ctx);
	if (r == 0 && atomic_load(&c->held) && !st->stop &&
	    st->reply_close == WS_NO_CLOSE) {
		/* the rest is conn.c's to keep until the work is done */
		size_t taken = (size_t)(st->in - data);

		*used = taken > carried ? taken - carried : 0;
		st->in = NULL;
		st->in_len = 0;
		free(joined);
		if (ctx_idle(st))
			ctx_trim(c, st);
		return -1;
	}
	if (r == 0 && !st->stop && st->reply_close == WS_NO_CLOSE &&
	    wslay_event_get_read_enabled(st->ctx) && st->in_len > 0) {
		/* held back: part of one control frame, less than WS_CTL_MAX */
		if (st->in_len > sizeof(st->carry))
			r = WSLAY_ERR_PROTO;
		else {
			memcpy(st->carry, st->in, st->in_len);
			st->carry_len = st->in_len;
		}
	}
	st->in = NULL;
	st->in_len = 0;
	free(joined);
	if (st->stop)
		return -1;
	if (st->reply_close != WS_NO_CLOSE) {
		send_close(c, st, st->reply_close, NULL);
		if (st->peer_closed)
			finish(c, st);
		else
			fail(c, st);
		return -1;
	}
	if (r != 0) {
		/* wslay refused a frame header (or ran out of memory) */
		send_close(c, st, r == WSLAY_ERR_NOMEM ? 1011 : 1002, NULL);
		fail(c, st);
		return -1;
	}
	if (!wslay_event_get_read_enabled(st->ctx)) {
		/* wslay queued a close with its reason: 1002, 1007, 1009 */
		flush_wslay(c, st, true);
		fail(c, st);
		return -1;
	}
	if (wslay_event_want_write(st->ctx))
		flush_wslay(c, st, false);
	if (ctx_idle(st))
		ctx_trim(c, st);
	schedule(c, st);
	return 0;
}

/* ---- deadlines ---- */

static uint64_t
seconds(int s)
{
	return (uint64_t)s * 1000;
}

/* When tick should run next (0: never); the sweep kicks the session then. */
static void
schedule(struct session *c, struct ws *st)
{
	const struct fk_listener *l = c->l;
	uint64_t at = 0;

	if (st->done)
		at = 0;
	else if (st->phase == PH_HTTP)
		at = l->header_timeout > 0 ?
		    st->head_start_ms + seconds(l->header_timeout) : 0;
	else if (l->ping_interval > 0)
		at = (st->ping_sent_ms != 0 ? st->ping_sent_ms : st->last_rx_ms) +
		    seconds(l->ping_interval);
	atomic_store(&c->tick_ms, at);
}

/* ---- the handshake ---- */

static void
http_error(struct session *c, struct ws *st, int status, const char *extra,
    const char *body)
{
	(void)http_respond(c, status, "text/plain; charset=utf-8", extra, body,
	    strlen(body), false, false);
	fail(c, st);
}

static bool
key_valid(const char *key)
{
	struct base64_decode_ctx b64;
	uint8_t raw[BASE64_DECODE_LENGTH(WS_KEY_LEN)];
	size_t n = 0;

	if (key == NULL || strlen(key) != WS_KEY_LEN)
		return false;
	base64_decode_init(&b64);
	return base64_decode_update(&b64, &n, raw, WS_KEY_LEN, key) == 1 &&
	    base64_decode_final(&b64) == 1 && n == 16;
}

static void
accept_value(const char *key, char out[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE) + 1])
{
	struct sha1_ctx sha;
	uint8_t digest[SHA1_DIGEST_SIZE];

	sha1_init(&sha);
	sha1_update(&sha, strlen(key), (const uint8_t *)key);
	sha1_update(&sha, sizeof(WS_GUID) - 1, (const uint8_t *)WS_GUID);
	sha1_digest(&sha, sizeof(digest), digest);
	base64_encode_raw(out, sizeof(digest), digest);
	out[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE)] = '\0';
}

/* "host[:port]" of an authority, with the scheme's port when none is given. */
static bool
authority(const char *s, size_t n, const char *defport, char *out, size_t outlen)
{
	const char *colon = NULL;
	size_t i;

	for (i = 0; i < n; i++) {
		if (s[i] == ':')
			colon = s + i;
		else if (s[i] == ']')
			colon = NULL;	/* inside an IPv6 literal */
		else if (s[i] == '/' || s[i] == '?' || s[i] == '#' || s[i] == '@')
			return false;
	}
	if (n == 0 || (colon != NULL && colon + 1 == s + n))
		return false;
	return snprintf(out, outlen, "%.*s%s%s", (int)n, s, colon ? "" : ":",
	    colon ? "" : defport) < (int)outlen;
}

/* Origin vs Host: the same host and port, whatever the scheme said. */
static bool
origin_matches_host(const char *origin, const char *host)
{
	char a[512], b[512];
	const char *rest, *port;

	if (strncasecmp(origin, "http://", 7) == 0) {
		rest = origin + 7;
		port = "80";
	} else if (strncasecmp(origin, "https://", 8) == 0) {
		rest = origin + 8;
		port = "443";
	} else
		return false;
	if (host == NULL || !authority(rest, strlen(rest), port, a, sizeof(a)) ||
	    !authority(host, strlen(host), port, b, sizeof(b)))
		return false;
	return strcasecmp(a, b) == 0;
}

static bool
origin_allowed(const struct session *c, const struct http_request *r)
{
	const struct fk_listener *l = c->l;
	const char *origin = http_header(r, "Origin");
	size_t i;

	/* not a browser: it could say anything anyway */
	if (origin == NULL)
		return true;
	if (l != NULL && l->norigins > 0) {
		for (i = 0; i < l->norigins; i++)
			if (strcmp(l->allowed_origins[i], "*") == 0 ||
			    strcasecmp(origin, l->allowed_origins[i]) == 0)
				return true;
		return false;
	}
	return origin_matches_host(origin, http_header(r, "Host"));
}

/* A complete request head: 0 to go on reading, -1 when the session ends. */
static int
ws_head(struct session *c, struct ws *st, const struct http_request *r)
{
	char acc[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE) + 1], resp[256];
	const char *ver, *origin;
	bool get = strcmp(r->method, "GET") == 0, head = strcmp(r->method, "HEAD") == 0;
	bool ok;
	int n;

	if (!get && !(head && c->svc->http != NULL)) {
		http_error(c, st, 405, "Allow: GET\r\n", "Method Not Allowed\n");
		return -1;
	}
	if (!get || (http_header(r, "Upgrade") == NULL &&
	    http_header(r, "Sec-WebSocket-Key") == NULL)) {
		/* a plain request: a page, or a hint */
		if (c->svc->http == NULL) {
			static const char hint[] = "This is a WebSocket endpoint: "
			    "connect with a WebSocket client (ws://).\n";

			/* a question asked in good faith, not an error */
			(void)http_respond(c, 426, "text/plain; charset=utf-8",
			    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
			    hint, sizeof(hint) - 1, false, false);
			finish(c, st);
			return -1;
		}
		pthread_mutex_lock(&c->out_lock);
		/* a banner, chat lines: not for an HTTP client */
		st->http_only = true;
		st->pend_len = 0;
		pthread_mutex_unlock(&c->out_lock);
		c->svc->http(c, r);
		if (!r->keep_alive || c->closing ||
		    atomic_load(&c->kill) != KILL_NONE) {
			finish(c, st);
			return -1;
		}
		http_head_reset(st->hp);
		st->head_start_ms = now_ms();
		schedule(c, st);
		return 0;
	}
	if (!http_header_has_token(r, "Upgrade", "websocket") ||
	    !http_header_has_token(r, "Connection", "upgrade") ||
	    r->minor < 1) {
		http_error(c, st, 400, NULL, "Bad WebSocket handshake: "
		    "HTTP/1.1 with Upgrade: websocket and Connection: Upgrade\n");
		return -1;
	}
	ver = http_header(r, "Sec-WebSocket-Version");
	if (ver == NULL || strcmp(ver, "13") != 0) {
		http_error(c, st, 426, "Sec-WebSocket-Version: 13\r\n",
		    "Unsupported WebSocket version: 13 is supported\n");
		return -1;
	}
	if (!key_valid(http_header(r, "Sec-WebSocket-Key"))) {
		http_error(c, st, 400, NULL, "Bad Sec-WebSocket-Key\n");
		return -1;
	}
	if (!origin_allowed(c, r)) {
		char shown[128];
		size_t i;

		/* the client wrote it: printable ASCII only into the log */
		origin = http_header(r, "Origin");
		for (i = 0; origin[i] != '\0' && i < sizeof(shown) - 1; i++)
			shown[i] = origin[i] >= 0x20 && origin[i] < 0x7f ? origin[i] : '?';
		shown[i] = '\0';
		log_warnx("websocket %s: origin \"%s\" refused", c->peer, shown);
		http_error(c, st, 403, NULL, "Origin not allowed\n");
		return -1;
	}

	accept_value(http_header(r, "Sec-WebSocket-Key"), acc);
	n = snprintf(resp, sizeof(resp), "HTTP/1.1 101 Switching Protocols\r\n"
	    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
	    "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
	pthread_mutex_lock(&c->out_lock);
	if (!conn_write_locked(c, resp, (size_t)n)) {
		pthread_mutex_unlock(&c->out_lock);
		finish(c, st);
		return -1;
	}
	st->phase = PH_WS;
	ok = st->pend_len == 0 || frame_pend(c, st);
	pthread_mutex_unlock(&c->out_lock);
	if (!ok)
		overflow(c);
	/* what the client asked for, for the service (the chat's room) */
	free(c->resource);
	c->resource = strdup(r->path);
	http_head_free(st->hp);
	st->hp = NULL;
	st->last_rx_ms = now_ms();
	schedule(c, st);
	/* the session proper: the banner, the service's greeting */
	conn_begin(c);
	return 0;
}

/* ---- the codec ---- */

static int
ws_open(struct session *c)
{
	struct ws *st = calloc(1, sizeof(*st));
	int max_head = c->l != NULL && c->l->max_header > 0 ?
	    c->l->max_header : WS_DEFAULT_HEAD;

	if (st == NULL)
		return -1;
	st->c = c;
	st->reply_close = WS_NO_CLOSE;
	st->head_start_ms = now_ms();
	if ((st->hp = http_head_new((size_t)max_head)) == NULL) {
		free(st);
		return -1;
	}
	c->cstate = st;
	schedule(c, st);
	return 0;
}

static int
ws_input(struct session *c, char *data, size_t n)
{
	struct ws *st = c->cstate;
	char *start = data;
	size_t taken;

	if (st->done || st->stop)
		return -1;
	while (st->phase == PH_HTTP && n > 0) {
		struct http_request *r;
		size_t used;
		int rc = http_head_feed(st->hp, data, n, &used, &r);

		if (rc == 0)
			return 0;
		if (rc < 0) {
			http_error(c, st, -rc, NULL, http_reason(-rc));
			return -1;
		}
		data += used;
		n -= used;
		if (ws_head(c, st, r) < 0)
			return -1;
	}
	if (n == 0)
		return 0;
	if (atomic_load(&c->held)) {
		/* the service's open was offloaded: frames wait for it */
		c->in_used = (size_t)(data - start);
		return -1;
	}
	if (ws_frames(c, st, data, n, &taken) < 0) {
		c->in_used = (size_t)(data - start) + taken;
		return -1;
	}
	return 0;
}

static void
ws_goodbye(struct session *c, enum conn_kill why)
{
	struct ws *st = c->cstate;
	int status = 0;

	if (st == NULL || st->done)
		return;
	if (st->phase == PH_HTTP) {
		switch (why) {
		case KILL_SHUTDOWN:
		case KILL_RETIRE:
			status = 503;
			break;
		case KILL_IDLE:
			status = 408;
			break;
		case KILL_PROTOCOL:
			status = st->timed_out ? 408 : 400;
			break;
		default:
			break;
		}
		if (status != 0 && http_head_pending(st->hp) > 0)
			(void)http_respond(c, status, "text/plain; charset=utf-8",
			    NULL, http_reason(status), strlen(http_reason(status)),
			    false, false);
		return;
	}
	switch (why) {
	case KILL_NONE:
		send_close(c, st, 1000, NULL);
		break;
	case KILL_SHUTDOWN:
		send_close(c, st, 1001, "server shutting down");
		break;
	case KILL_RETIRE:
		send_close(c, st, 1001, "server reloaded: please reconnect");
		break;
	case KILL_IDLE:
		send_close(c, st, 1000, "idle timeout");
		break;
	case KILL_OVERFLOW:
		send_close(c, st, 1008, "too slow: output queue full");
		break;
	case KILL_PROTOCOL:
		send_close(c, st, 1002, NULL);
		break;
	default:
		/* KILL_SEND_TIMEOUT: it reads nothing, so say nothing */
		break;
	}
}

static enum conn_kill
ws_tick(struct session *c, uint64_t now)
{
	struct ws *st = c->cstate;
	const struct fk_listener *l = c->l;
	unsigned char p[8];
	bool ok;
	int i;

	if (st == NULL || st->done)
		return KILL_NONE;
	if (st->phase == PH_HTTP) {
		if (l->header_timeout > 0 && older_than(now, st->head_start_ms,
		    seconds(l->header_timeout))) {
			st->timed_out = true;
			return KILL_PROTOCOL;
		}
	} else if (l->ping_interval > 0) {
		if (st->ping_sent_ms != 0) {
			/* no frame at all since the ping */
			if (older_than(now, st->ping_sent_ms, seconds(l->ping_interval)))
				return KILL_IDLE;
		} else if (older_than(now, st->last_rx_ms, seconds(l->ping_interval))) {
			for (i = 0; i < 8; i++)
				p[i] = (unsigned char)(now >> (56 - 8 * i));
			pthread_mutex_lock(&c->out_lock);
			ok = st->closed || write_frame(c, WSLAY_PING, p, sizeof(p));
			pthread_mutex_unlock(&c->out_lock);
			if (!ok)
				return KILL_OVERFLOW;
			st->ping_sent_ms = now != 0 ? now : 1;
		}
	}
	schedule(c, st);
	return KILL_NONE;
}

/*
 * Handover.  A session moves only between messages: no frame half read, no
 * fragmented message under way, nothing of wslay's unsent, no close begun;
 * until then it is tried again a little later (and a session that never
 * gets there drains with the old worker, closed with 1001 at the end).
 * Between messages there is no wslay context to carry (see ctx_trim): the
 * state is the ping clock and a reply line not yet complete.
 */
static int
ws_save(struct session *c, char *buf, size_t len)
{
	struct ws *st = c->cstate;
	size_t need;

	if (st == NULL || st->phase != PH_WS || st->done || st->stop ||
	    st->reply_close != WS_NO_CLOSE || st->carry_len > 0 || !trk_idle(&st->trk))
		return -1;
	if (st->ctx != NULL) {
		if (wslay_event_want_write(st->ctx))
			flush_wslay(c, st, false);	/* a pong goes out first */
		if (!ctx_idle(st))
			return -1;
		ctx_trim(c, st);
	}
	pthread_mutex_lock(&c->out_lock);
	need = 16 + st->pend_len;
	if (st->closed || st->http_only || st->bin_active || st->ctl_len > 0 ||
	    need > len) {
		pthread_mutex_unlock(&c->out_lock);
		return -1;
	}
	memcpy(buf, &st->last_rx_ms, 8);
	memcpy(buf + 8, &st->ping_sent_ms, 8);
	if (st->pend_len > 0)
		memcpy(buf + 16, st->pend, st->pend_len);
	pthread_mutex_unlock(&c->out_lock);
	return (int)need;
}

static int
ws_restore(struct session *c, const char *buf, size_t len)
{
	struct ws *st;

	if (len < 16 || len - 16 > max_output(c) || (st = calloc(1, sizeof(*st))) == NULL)
		return -1;
	st->c = c;
	st->reply_close = WS_NO_CLOSE;
	st->phase = PH_WS;
	memcpy(&st->last_rx_ms, buf, 8);
	memcpy(&st->ping_sent_ms, buf + 8, 8);
	if (len > 16 && !grow(&st->pend, &st->pend_cap, len - 16, max_output(c))) {
		free(st);
		return -1;
	}
	if (len > 16)
		memcpy(st->pend, buf + 16, len - 16);
	st->pend_len = len - 16;
	pthread_mutex_lock(&c->out_lock);
	c->cstate = st;
	pthread_mutex_unlock(&c->out_lock);
	schedule(c, st);
	return 0;
}

static void
ws_close(struct session *c)
{
	struct ws *st = c->cstate;

	if (st == NULL)
		return;
	pthread_mutex_lock(&c->out_lock);
	c->cstate = NULL;
	pthread_mutex_unlock(&c->out_lock);
	if (st->ctx != NULL)
		wslay_event_context_free(st->ctx);
	http_head_free(st->hp);
	free(st->pend);
	free(st->bin);
	free(st->frame);
	free(st);
	free(c->resource);
	c->resource = NULL;
}

const struct codec codec_websocket = {
	.name = "websocket",
	.open = ws_open,
	.input = ws_input,
	.output = ws_output,
	.goodbye = ws_goodbye,
	.tick = ws_tick,
	.save = ws_save,
	.restore = ws_restore,
	.close = ws_close,
	.can_hold = true,
};
