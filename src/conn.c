/*
 * Client connections: reading, line framing, replies, limits and timeouts.
 *
 * A connection waiting for its client costs no thread: its socket sits in
 * the worker's epoll set (edge-triggered) and the pool thread that gets the
 * next event serves it.  Ownership is a two-bit state (RUN, PEND) so that no
 * lock is taken on the hot path and nobody ever waits for anybody.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "conn.h"
#include "handover.h"
#include "iplimit.h"
#include "log.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"
#include "worker.h"

#define ST_RUN		1u
#define ST_PEND		2u
#define ST_WAIT		4u	/* the acceptor waits to reuse the struct */

#define READ_CHUNK	16384
#define OUT_MIN_CAP	256
#define OUT_KEEP_CAP	2048	/* larger output buffers are freed once flushed */
#define DRAIN_LIMIT	65536	/* bytes read and dropped before a graceful close */
#define LINGER_MS	1000	/* a closed session waits this long for its client's close */
#define LINGER_LIMIT	(1024 * 1024)	/* and reads at most this much meanwhile */

static const char *const kill_line[] = {
	[KILL_NONE] = NULL,
	[KILL_SHUTDOWN] = "ERR server shutting down\r\n",
	[KILL_RETIRE] = "ERR server reloaded: please reconnect\r\n",
	[KILL_IDLE] = "ERR idle timeout\r\n",
	[KILL_SEND_TIMEOUT] = NULL,
	[KILL_OVERFLOW] = "ERR too slow: output queue full, disconnecting\r\n",
	[KILL_PROTOCOL] = NULL,
};

static const char *const kill_name[] = {
	[KILL_NONE] = "client",
	[KILL_SHUTDOWN] = "shutdown",
	[KILL_RETIRE] = "reload",
	[KILL_IDLE] = "idle timeout",
	[KILL_SEND_TIMEOUT] = "send timeout",
	[KILL_OVERFLOW] = "output queue full",
	[KILL_PROTOCOL] = "protocol error",
};

/* ---- output ---- */

/* Append under out_lock; false when the queue would pass max_output. */
static bool
out_append(struct session *c, const void *buf, size_t n)
{
	size_t queued = c->out_len - c->out_off;

	if (c->out_full || queued + n > (size_t)c->w->cfg->max_output) {
		c->out_full = true;
		return false;
	}
	if (c->out_len + n > c->out_cap) {
		if (c->out_off > 0) {
			memmove(c->out, c->out + c->out_off, queued);
			c->out_len = queued;
			c->out_off = 0;
		}
		if (c->out_len + n > c->out_cap) {
			size_t cap = c->out_cap ? c->out_cap : OUT_MIN_CAP;
			char *nb;

			while (cap < c->out_len + n)
				cap *= 2;
			nb = realloc(c->out, cap);
			if (nb == NULL) {
				c->out_full = true;
				return false;
			}
			c->out = nb;
			c->out_cap = cap;
		}
	}
	memcpy(c->out + c->out_len, buf, n);
	c->out_len += n;
	return true;
}

void
session_send(struct session *c, const void *buf, size_t n)
{
	bool ok;

	pthread_mutex_lock(&c->out_lock);
	if (!atomic_load_explicit(&c->open, memory_order_relaxed) || c->out_dying)
		ok = true;
	else if (c->codec->output != NULL)
		ok = c->codec->output(c, buf, n);
	else
		ok = out_append(c, buf, n);
	pthread_mutex_unlock(&c->out_lock);
	if (!ok) {
		int none = KILL_NONE;

		atomic_compare_exchange_strong(&c->kill, &none, KILL_OVERFLOW);
		atomic_fetch_or(&c->state, ST_PEND);
	}
}

void
session_reply(struct session *c, const char *fmt, ...)
{
	char buf[1024], *p = buf;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf) - 2) {
		p = malloc((size_t)n + 3);
		if (p == NULL)
			return;
		va_start(ap, fmt);
		vsnprintf(p, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	p[n] = '\r';
	p[n + 1] = '\n';
	session_send(c, p, (size_t)n + 2);
	if (p != buf)
		free(p);
}

void
session_wake(struct session *c)
{
	struct epoll_event ev;

	/* re-arming an edge-triggered socket reports its readiness again, so a
	 * pool thread picks the session up and flushes what was queued */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

void
session_quit(struct session *c)
{
	session_send(c, "Bye\r\n", 5);
	c->closing = true;
}

void *
session_data(struct session *c)
{
	return c->data;
}

const void *
session_conf(struct session *c)
{
	return c->svc_conf;
}

const struct fk_listener *
session_listener(struct session *c)
{
	return c->l;
}

const char *
session_peer(struct session *c)
{
	return c->peer;
}

const char *
session_resource(struct session *c)
{
	return c->resource;
}

/* ---- for codecs ---- */

bool
conn_write_locked(struct session *c, const void *buf, size_t n)
{
	return out_append(c, buf, n);
}

bool
conn_write(struct session *c, const void *buf, size_t n)
{
	bool ok;

	pthread_mutex_lock(&c->out_lock);
	ok = out_append(c, buf, n);
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
	atomic_store_explicit(&c->last_line_ms, now_ms(), memory_order_relaxed);
}

void
conn_begin(struct session *c)
{
	if (c->begun)
		return;
	c->begun = true;
	if (c->l->banner != NULL)
		session_reply(c, "%s", c->l->banner);
	if (c->svc->open != NULL)
		c->svc->open(c);
}

/* ---- offloading work that may wait ---- */

/*
 * One thread per worker, started the first time a service needs it, runs
 * the work sessions hand it, in order.  A session is held while its work is
 * queued or running: its owner only flushes output, and a kill, its input
 * and its EOF wait, so the service never sees two calls for it at once and
 * the session is never closed under the work.  Each session has at most one
 * item queued, so the queue is bounded by the worker's connections.
 */
struct offload {
	struct session	*s;
	void		(*fn)(struct session *, void *);
	void		*arg;
	struct offload	*next;
};

static pthread_mutex_t	 off_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 off_cond = PTHREAD_COND_INITIALIZER;
static struct offload	*off_head, **off_tail = &off_head;
static bool		 off_started;

static void *
offloader(void *arg)
{
	(void)arg;
	for (;;) {
		struct offload *o;

		pthread_mutex_lock(&off_lock);
		while (off_head == NULL)
			pthread_cond_wait(&off_cond, &off_lock);
		o = off_head;
		if ((off_head = o->next) == NULL)
			off_tail = &off_head;
		pthread_mutex_unlock(&off_lock);

		o->fn(o->s, o->arg);
		/*
		 * Once the hold is gone the session may close at any time, so
		 * its descriptor is not touched here: the owner, if there is
		 * one, sees PEND and goes on; otherwise this thread takes the
		 * session up like any owner (the struct itself is never freed).
		 */
		atomic_store(&o->s->held, false);
		conn_kick(o->s);
		free(o);
	}
	return NULL;
}

bool
session_offload(struct session *c, void (*fn)(struct session *, void *), void *arg)
{
	struct offload *o;

	if (!c->codec->can_hold || atomic_load(&c->held) || c->fd < 0)
		return false;
	if ((o = calloc(1, sizeof(*o))) == NULL)
		return false;
	o->s = c;
	o->fn = fn;
	o->arg = arg;
	pthread_mutex_lock(&off_lock);
	if (!off_started) {
		pthread_t tid;
		pthread_attr_t attr;

		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&tid, &attr, offloader, NULL) != 0) {
			pthread_attr_destroy(&attr);
			pthread_mutex_unlock(&off_lock);
			free(o);
			return false;
		}
		pthread_attr_destroy(&attr);
		pthread_setname_np(tid, "forkd-offload");
		off_started = true;
	}
	atomic_store(&c->held, true);
	*off_tail = o;
	off_tail = &o->next;
	pthread_cond_signal(&off_cond);
	pthread_mutex_unlock(&off_lock);
	return true;
}

/* Write what is queued: 0 done or would block, -1 the socket is dead. */
static int
flush(struct session *c)
{
	int rc = 0;

	pthread_mutex_lock(&c->out_lock);
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
		    MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			c->out_off += (size_t)n;
			sb_count(&SESSION_LC(c)->bytes_out, (uint64_t)n);	/* metrics */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (atomic_load_explicit(&c->stalled_ms, memory_order_relaxed) == 0)
				atomic_store_explicit(&c->stalled_ms, now_ms(),
				    memory_order_relaxed);
		} else {
			rc = -1;
		}
		break;
	}
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		atomic_store_explicit(&c->stalled_ms, 0, memory_order_relaxed);
		if (c->out_cap > OUT_KEEP_CAP) {
			free(c->out);
			c->out = NULL;
			c->out_cap = 0;
		}
	}
	pthread_mutex_unlock(&c->out_lock);
	return rc;
}

static bool
out_pending(struct session *c)
{
	bool p;

	pthread_mutex_lock(&c->out_lock);
	p = c->out_off < c->out_len;
	pthread_mutex_unlock(&c->out_lock);
	return p;
}

/* ---- closing ---- */

/* Read and drop what the client sends: 0 when more may come, 1 when done
 * (its close, an error, or the limit). */
static int
linger_drain(struct session *c)
{
	char drop[4096];
	ssize_t n;

	while (c->lingered < LINGER_LIMIT) {
		n = recv(c->fd, drop, sizeof(drop), MSG_DONTWAIT);
		if (n > 0) {
			c->lingered += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : 1;
	}
	return 1;
}

/* Nothing more is sent: the output queue goes, and senders see it closed. */
static void
out_drop(struct session *c)
{
	pthread_mutex_lock(&c->out_lock);
	atomic_store(&c->open, false);
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = c->out_cap = 0;
	c->out_full = false;
	pthread_mutex_unlock(&c->out_lock);
}

/* The codec's and the service's state, and the input kept, go. */
static void
state_drop(struct session *c)
{
	if (c->codec->close != NULL)
		c->codec->close(c);
	else
		free(c->cstate);
	c->cstate = NULL;
	c->begun = false;
	atomic_store(&c->tick_ms, 0);
	atomic_store(&c->tick_due, false);
	free(c->heldbuf);
	c->heldbuf = NULL;
	c->heldlen = 0;
	framer_reset(&c->in);
	free(c->data);
	c->data = NULL;
	free(c->resource);
	c->resource = NULL;
}

/* The descriptor and the places it held go. */
static void
conn_release(struct session *c)
{
	struct worker *w = c->w;
	struct sb_slot *sb = w->sb;

	close(c->fd);
	c->fd = -1;
	atomic_store(&c->lingering, false);
	if (c->ip_counted)
		iplimit_release(w->slot, (struct sockaddr *)&c->peer_addr);
	c->ip_counted = false;
	atomic_fetch_sub_explicit(&sb->conns, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&sb->svc_conns[c->svc_idx], 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&SESSION_LC(c)->conns, 1, memory_order_relaxed); /* metrics */
	atomic_fetch_sub_explicit(&sb->proto_conns[c->l->protocol], 1, memory_order_relaxed);
	atomic_fetch_sub(&w->nconns, 1);
}

static void
conn_close(struct session *c, enum conn_kill why)
{
	struct worker *w = c->w;
	struct sb_slot *sb = w->sb;
	/*
	 * A session the server ends on its own (a quit, a timeout, a protocol
	 * error, a slow reader) waits, write side shut, for its client to
	 * close too: data the client sends meanwhile would otherwise turn the
	 * close into a reset that can destroy the last words unread.  A stop
	 * or a reload's end closes at once, after reading what is there.
	 */
	bool linger = !c->eof && why != KILL_SEND_TIMEOUT && why != KILL_SHUTDOWN &&
	    why != KILL_RETIRE && (why != KILL_NONE || c->closing);

	if (c->begun && c->svc->close != NULL)
		c->svc->close(c);
	c->begun = false;
	out_drop(c);

	if (!linger && why != KILL_NONE && why != KILL_SEND_TIMEOUT) {
		char drop[4096];
		size_t dropped = 0;
		ssize_t n;

		/* give the last line a chance: half-close, then eat what the
		 * client still sends so the close is not turned into a reset */
		shutdown(c->fd, SHUT_WR);
		while (dropped < DRAIN_LIMIT &&
		    (n = recv(c->fd, drop, sizeof(drop), MSG_DONTWAIT)) > 0)
			dropped += (size_t)n;
	}
	log_debug("%s: closed (%s)", c->peer, kill_name[why]);
	state_drop(c);
	atomic_fetch_add_explicit(&sb->closed[why], 1, memory_order_relaxed);
	if (linger && shutdown(c->fd, SHUT_WR) == 0) {
		c->lingered = 0;
		if (linger_drain(c) == 0) {
			/* its close (EPOLLIN/RDHUP) or the sweep ends it */
			c->linger_until = now_ms() + LINGER_MS;
			atomic_store(&c->lingering, true);
			return;
		}
	}
	conn_release(c);
}

/* The last words for this reason, once: the codec's, or an ERR line. */
static void
say_goodbye(struct session *c, enum conn_kill why)
{
	if (c->goodbye_said)
		return;
	c->goodbye_said = true;
	if (c->codec->goodbye != NULL) {
		c->codec->goodbye(c, why);
	} else if (kill_line[why] != NULL) {
		pthread_mutex_lock(&c->out_lock);
		out_append(c, kill_line[why], strlen(kill_line[why]));
		pthread_mutex_unlock(&c->out_lock);
	}
}

/* The owner acts on a kill request: say why (when the protocol can), close. */
static void
conn_die(struct session *c, enum conn_kill why)
{
	if (why == KILL_OVERFLOW) {
		pthread_mutex_lock(&c->out_lock);
		c->out_off = c->out_len = 0;	/* what it never read is lost anyway */
		c->out_full = false;
		/* and what others still send it (chat deliveries) must not slip
		 * in before its last words: the client would see a gap */
		c->out_dying = true;
		pthread_mutex_unlock(&c->out_lock);
	}
	if (why != KILL_SEND_TIMEOUT) {
		say_goodbye(c, why);
		flush(c);
	}
	conn_close(c, why);
}

/* ---- input ---- */

/* "quit" or "exit", in any case; trailing blanks and stray CRs (a telnet
 * that sends CR CR LF) do not count */
static bool
is_quit(const char *line, size_t len)
{
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' ||
	    line[len - 1] == '\r'))
		len--;
	return len == 4 && (strncasecmp(line, "quit", 4) == 0 ||
	    strncasecmp(line, "exit", 4) == 0);
}

int
conn_request(struct session *c, char *line, size_t len)
{
	c->lines++;
	if (line == NULL) {
		session_reply(c, "ERR line too long (max %d bytes)", c->w->cfg->max_line);
		return c->closing ? -1 : 0;
	}
	atomic_store_explicit(&c->last_line_ms, now_ms(), memory_order_relaxed);
	if (is_quit(line, len)) {
		session_quit(c);
		return -1;
	}
	c->svc->line(c, line, len);
	if (c->closing || atomic_load_explicit(&c->kill, memory_order_relaxed) != KILL_NONE ||
	    atomic_load(&c->held))
		return -1;
	return 0;
}

/*
 * Bytes from the client to the codec.  0: go on reading; 1: stop (the
 * session closes); 2: held, and the bytes after the held request are kept
 * in heldbuf for later.
 */
static int
feed(struct session *c, char *data, size_t n)
{
	int r;

	c->lines = 0;
	c->in_used = n;
	r = c->codec->input(c, data, n);
	if (c->lines > 0) {
		atomic_fetch_add_explicit(&c->w->sb->requests, c->lines, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->w->sb->proto_requests[c->l->protocol],
		    c->lines, memory_order_relaxed);
		sb_count(&SESSION_LC(c)->requests, c->lines);	/* metrics */
	}
	if (c->closing || atomic_load_explicit(&c->kill, memory_order_relaxed))
		return 1;
	if (atomic_load(&c->held)) {
		/* (also when the session's open was offloaded from the codec) */
		size_t rest = c->in_used < n ? n - c->in_used : 0;

		if (rest > 0) {
			/* data may be heldbuf itself */
			char *nb = malloc(rest);

			if (nb == NULL) {
				conn_kill(c, KILL_OVERFLOW);
				return 1;
			}
			memcpy(nb, data + c->in_used, rest);
			free(c->heldbuf);
			c->heldbuf = nb;
			c->heldlen = rest;
		}
		return 2;
	}
	return r < 0 ? 1 : 0;
}

/* One round of work for the owner. */
static void
conn_work(struct session *c)
{
	char buf[READ_CHUNK];
	int why;

	if (atomic_load(&c->lingering)) {
		if (linger_drain(c) != 0 || now_ms() >= c->linger_until)
			conn_release(c);
		return;
	}
	if (!atomic_load(&c->open))
		return;
	if (atomic_load(&c->held)) {
		/* its work is on the offload thread: only send what is ready */
		flush(c);
		return;
	}
	if ((why = atomic_exchange(&c->kill, KILL_NONE)) != KILL_NONE) {
		conn_die(c, why);
		return;
	}
	if (atomic_exchange(&c->tick_due, false) && c->codec->tick != NULL &&
	    (why = c->codec->tick(c, now_ms())) != KILL_NONE) {
		conn_die(c, why);
		return;
	}
	if (flush(c) < 0) {
		conn_close(c, KILL_NONE);
		return;
	}
	/* what was read while a request was held comes first */
	if (c->heldlen > 0 && !c->closing) {
		char *held = c->heldbuf;
		size_t len = c->heldlen;
		int r;

		c->heldbuf = NULL;
		c->heldlen = 0;
		r = feed(c, held, len);
		free(held);
		if (r == 2) {
			flush(c);
			return;
		}
	}
	/* a client that does not read its replies is not read from either:
	 * TCP pushes back on it and its queue stays bounded */
	if (!c->closing && !out_pending(c) && !atomic_load(&c->held)) {
		for (;;) {
			ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);

			if (n > 0) {
				int r;

				sb_count(&SESSION_LC(c)->bytes_in, (uint64_t)n);	/* metrics */
				r = feed(c, buf, (size_t)n);
				if (r == 2) {
					flush(c);
					return;
				}
				if (r == 1)
					break;
				if (flush(c) < 0) {
					conn_close(c, KILL_NONE);
					return;
				}
				if ((size_t)n < sizeof(buf) || out_pending(c))
					break;
				continue;
			}
			if (n == 0) {
				c->eof = true;
				break;
			}
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_close(c, KILL_NONE);
				return;
			}
			break;
		}
	}
	if ((why = atomic_exchange(&c->kill, KILL_NONE)) != KILL_NONE) {
		conn_die(c, why);
		return;
	}
	if (flush(c) < 0 || c->eof) {
		conn_close(c, KILL_NONE);
		return;
	}
	if (c->closing && !out_pending(c)) {
		if (!c->goodbye_said) {
			/* a quit: the protocol's own last words (a close frame) */
			say_goodbye(c, KILL_NONE);
			if (flush(c) == 0 && out_pending(c))
				return;	/* EPOLLOUT brings us back */
		}
		conn_close(c, KILL_NONE);
	}
}

/* Run as owner until nobody has news for the connection any more. */
static void
conn_run(struct session *c)
{
	for (;;) {
		unsigned expect = ST_RUN;

		atomic_fetch_and(&c->state, ~ST_PEND);
		conn_work(c);
		if (atomic_compare_exchange_strong(&c->state, &expect, 0))
			return;
		if (expect & ST_WAIT) {
			/* the fd was closed and is a new client's: nothing left
			 * pending can be for this connection */
			atomic_store(&c->state, 0);
			futex_wake_private(&c->state, 1);
			return;
		}
	}
}

void
conn_kick(struct session *c)
{
	if (atomic_fetch_or(&c->state, ST_RUN | ST_PEND) & ST_RUN)
		return;		/* the owner will see PEND */
	conn_run(c);
}

void
conn_kill(struct session *c, enum conn_kill why)
{
	int none = KILL_NONE;

	if (!atomic_load(&c->open))
		return;
	atomic_compare_exchange_strong(&c->kill, &none, (int)why);
	conn_kick(c);
}

/* ---- opening ---- */

static struct session *
slot_for(struct worker *w, int fd)
{
	struct session *c;

	if ((size_t)fd >= w->conns_cap)
		return NULL;
	c = __atomic_load_n(&w->conns[fd], __ATOMIC_ACQUIRE);
	if (c == NULL) {
		c = calloc(1, sizeof(*c));
		if (c == NULL)
			return NULL;
		pthread_mutex_init(&c->out_lock, NULL);
		c->fd = -1;
		c->w = w;
		__atomic_store_n(&w->conns[fd], c, __ATOMIC_RELEASE);
	}
	return c;
}

/*
 * An owner may still hold this struct from the fd's last life: it has
 * closed that fd and has a few steps left, more if it was preempted there.
 * Sleep until it lets go rather than yield the CPU, which may go to any
 * busy process for a whole scheduler tick.
 */
static void
own(struct session *c)
{
	unsigned expect;

	for (;;) {
		expect = 0;
		if (atomic_compare_exchange_weak(&c->state, &expect, ST_RUN))
			break;
		if (expect == 0)
			continue;
		if ((expect & ST_WAIT) ||
		    atomic_compare_exchange_weak(&c->state, &expect, expect | ST_WAIT))
			futex_wait_private(&c->state, expect | ST_WAIT);
	}
}

/* The acceptor and the handover both open sessions: keep the highest fd. */
static void
note_fd(struct worker *w, int fd)
{
	int max = atomic_load(&w->maxfd);

	while (fd > max && !atomic_compare_exchange_weak(&w->maxfd, &max, fd))
		;
}

void
conn_open(struct worker *w, int fd, int li, const struct sockaddr *peer, bool ip_counted)
{
	const struct fk_listener *l = &w->cfg->listeners[li];
	struct session *c = slot_for(w, fd);
	struct epoll_event ev;
	uint64_t now = now_ms();

	if (c == NULL) {
		log_warnx("no room for connection on fd %d", fd);
		if (ip_counted)
			iplimit_release(w->slot, peer);
		atomic_fetch_sub(&w->sb->conns, 1);
		close(fd);
		return;
	}
	own(c);
	/* the kernel's send buffer counts against max_output too: left to
	 * itself it grows to megabytes for a client that does not read */
	{
		int sndbuf = w->cfg->max_output / 2;	/* the kernel doubles it */

		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	}
	c->fd = fd;
	c->l = l;
	c->svc = l->service;
	c->svc_idx = service_index(l->service);
	c->svc_conf = l->svc_conf != NULL ? l->svc_conf : w->cfg->service_conf[c->svc_idx];
	c->codec = l->codec != NULL ? l->codec : &codec_line;
	c->cstate = NULL;
	c->goodbye_said = c->begun = false;
	atomic_store(&c->tick_ms, 0);
	atomic_store(&c->tick_due, false);
	atomic_store(&c->idle_ms, (uint64_t)l->idle_timeout * 1000);
	c->closing = c->eof = false;
	c->ho_stay = false;
	c->out_full = c->out_dying = false;
	atomic_store(&c->kill, KILL_NONE);
	atomic_store(&c->stalled_ms, 0);
	atomic_store(&c->last_line_ms, now);
	framer_init(&c->in, (size_t)w->cfg->max_line);
	sockaddr_text(peer, c->peer, sizeof(c->peer));
	memcpy(&c->peer_addr, peer, peer->sa_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	c->ip_counted = ip_counted;
	c->data = NULL;
	if (c->svc->session_size > 0 && (c->data = calloc(1, c->svc->session_size)) == NULL) {
		log_warnx("%s: out of memory", c->peer);
		if (ip_counted)
			iplimit_release(w->slot, peer);
		atomic_fetch_sub(&w->sb->conns, 1);
		close(fd);
		c->fd = -1;
		atomic_store(&c->state, 0);
		return;
	}
	note_fd(w, fd);
	atomic_fetch_add(&w->nconns, 1);	/* sb->conns: counted by the acceptor */
	atomic_fetch_add_explicit(&w->sb->served, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->sb->svc_conns[c->svc_idx], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->sb->svc_served[c->svc_idx], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&SESSION_LC(c)->conns, 1, memory_order_relaxed); /* metrics */
	sb_count(&SESSION_LC(c)->accepted, 1);	/* metrics */
	atomic_fetch_add_explicit(&w->sb->proto_conns[l->protocol], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->sb->proto_served[l->protocol], 1, memory_order_relaxed);
	atomic_store(&c->open, true);
	log_debug("%s: connected to %s (%s)", c->peer, c->svc->name, c->codec->name);

	if (c->codec->open != NULL && c->codec->open(c) != 0) {
		log_warnx("%s: out of memory", c->peer);
		conn_close(c, KILL_NONE);
		atomic_store(&c->state, 0);
		return;
	}

	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		log_warn("%s: cannot watch the connection", c->peer);
		conn_close(c, KILL_NONE);
		atomic_store(&c->state, 0);
		return;
	}
	/* send the greeting, then hand over as any owner does */
	atomic_fetch_or(&c->state, ST_PEND);
	conn_run(c);
}

/* ---- sweeping ---- */

void
conn_sweep(struct worker *w, uint64_t now)
{
	int fd, max = atomic_load(&w->maxfd);
	uint64_t send_ms = (uint64_t)w->cfg->send_timeout * 1000;

	for (fd = 0; fd <= max && (size_t)fd < w->conns_cap; fd++) {
		struct session *c = __atomic_load_n(&w->conns[fd], __ATOMIC_ACQUIRE);
		uint64_t stalled, last, tick;

		if (c != NULL && atomic_load(&c->lingering)) {
			conn_kick(c);	/* its owner ends it once the bound passes */
			continue;
		}
		if (c == NULL || !atomic_load_explicit(&c->open, memory_order_relaxed))
			continue;
		stalled = atomic_load_explicit(&c->stalled_ms, memory_order_relaxed);
		last = atomic_load_explicit(&c->last_line_ms, memory_order_relaxed);
		tick = atomic_load_explicit(&c->tick_ms, memory_order_relaxed);
		if (tick != 0 && now >= tick) {
			atomic_store_explicit(&c->tick_ms, 0, memory_order_relaxed);
			atomic_store(&c->tick_due, true);
			conn_kick(c);
		}
		/*
		 * A kill another thread asked for (a chat delivery that filled
		 * the output queue) waits for the owner, and a client that reads
		 * nothing gives its socket no event to bring one: act on it here.
		 */
		if (atomic_load_explicit(&c->kill, memory_order_relaxed) != KILL_NONE)
			conn_kick(c);
		else if (stalled != 0 && older_than(now, stalled, send_ms))
			conn_kill(c, KILL_SEND_TIMEOUT);
		else if (older_than(now, last,
		    atomic_load_explicit(&c->idle_ms, memory_order_relaxed)))
			conn_kill(c, KILL_IDLE);
	}
}

void
conn_kill_all(struct worker *w, enum conn_kill why)
{
	int fd, max = atomic_load(&w->maxfd);

	for (fd = 0; fd <= max && (size_t)fd < w->conns_cap; fd++) {
		struct session *c = __atomic_load_n(&w->conns[fd], __ATOMIC_ACQUIRE);

		if (c != NULL && atomic_load(&c->open))
			conn_kill(c, why);
	}
}

/* ---- handover ---- */

#define HO_PART_MAX	4096	/* a codec's or a service's own state */

/* Let go of a session this thread owns, running what came meanwhile. */
static void
release(struct session *c)
{
	unsigned expect = ST_RUN;

	if (!atomic_compare_exchange_strong(&c->state, &expect, 0))
		conn_run(c);
}

/*
 * Only a session at rest moves: nothing of its own under way (a request on
 * the offload thread, its last words, a kill), its state whole.
 */
static bool
movable(const struct session *c)
{
	return atomic_load(&c->open) && !atomic_load(&c->held) && !c->closing &&
	    !c->eof && !c->goodbye_said && c->begun && !c->ho_stay &&
	    atomic_load(&c->kill) == KILL_NONE && c->codec->save != NULL &&
	    (c->svc->save != NULL || c->svc->session_size == 0);
}

struct session *
conn_take(struct worker *w, int fd)
{
	struct session *c;
	unsigned expect = 0;

	if ((size_t)fd >= w->conns_cap)
		return NULL;
	c = __atomic_load_n(&w->conns[fd], __ATOMIC_ACQUIRE);
	if (c == NULL || !atomic_load(&c->open))
		return NULL;
	if (!atomic_compare_exchange_strong(&c->state, &expect, ST_RUN))
		return NULL;	/* busy: another round */
	if (!movable(c) || epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL) != 0) {
		release(c);
		return NULL;
	}
	return c;
}

int
conn_save(struct session *c, struct hobuf *b)
{
	char part[HO_PART_MAX], spart[HO_PART_MAX];
	int n, sn;

	/*
	 * The service first: from here on what others send it waits aside.
	 * Then the codec, which may still queue a frame of its own (a pong).
	 * So the output queue below is all the session had.
	 */
	sn = c->svc->save != NULL ? c->svc->save(c, spart, sizeof(spart)) : 0;
	if (sn < 0)
		return -1;
	if ((n = c->codec->save(c, part, sizeof(part))) < 0)
		return -1;
	hob_u32(b, (uint32_t)(c->l - c->w->cfg->listeners));
	hob_u32(b, (uint32_t)c->l->protocol);
	hob_bytes(b, c->svc->name, strlen(c->svc->name));
	hob_bytes(b, &c->l->addr, c->l->addrlen);
	hob_bytes(b, &c->peer_addr, c->peer_addr.ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	hob_u32(b, c->ip_counted);
	hob_u64(b, atomic_load(&c->last_line_ms));
	hob_u64(b, atomic_load(&c->idle_ms));
	/* what the client sent and nobody has answered yet, in order */
	hob_u32(b, c->in.discarding);
	hob_bytes(b, c->in.buf, c->in.len);
	hob_bytes(b, c->heldbuf, c->heldlen);
	/* what was queued for it and not yet sent (too much: it goes as too
	 * slow, here) */
	pthread_mutex_lock(&c->out_lock);
	if (c->out_full) {
		pthread_mutex_unlock(&c->out_lock);
		return -1;
	}
	hob_bytes(b, c->out != NULL ? c->out + c->out_off : NULL, c->out_len - c->out_off);
	pthread_mutex_unlock(&c->out_lock);
	hob_bytes(b, part, (size_t)n);
	hob_bytes(b, spart, (size_t)sn);
	return b->err ? -1 : 0;
}

void
conn_handed(struct session *c, bool moved, uint64_t mark, char **tail, size_t *tlen)
{
	struct worker *w = c->w;
	struct epoll_event ev;

	*tail = NULL;
	*tlen = 0;
	if (!moved) {
		if (c->svc->handed != NULL)
			c->svc->handed(c, false, 0, tail, tlen);
		ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
		ev.data.ptr = c;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
			log_warn("%s: cannot watch the connection again", c->peer);
			conn_close(c, KILL_NONE);
		}
		atomic_fetch_or(&c->state, ST_PEND);
		conn_run(c);
		return;
	}
	/* it lives on in the other worker: no close hook, no goodbye, and
	 * never shutdown(), which would end it there too */
	if (c->svc->handed != NULL)
		c->svc->handed(c, true, mark, tail, tlen);
	out_drop(c);
	state_drop(c);
	log_debug("%s: handed over", c->peer);
	conn_release(c);
	conn_run(c);		/* lets go; whatever was pending finds it closed */
}

/* The listener the session came in on, in this worker's configuration. */
static int
find_listener(const struct fk_config *cfg, uint32_t li, uint32_t proto, const char *svc,
    size_t svclen, const char *addr, size_t addrlen)
{
	size_t i;

	for (i = 0; i < cfg->nlisteners; i++) {
		/* the same index first: two listeners may share an address */
		size_t k = (li + i) % cfg->nlisteners;
		const struct fk_listener *l = &cfg->listeners[k];

		if ((uint32_t)l->protocol == proto && strlen(l->service->name) == svclen &&
		    memcmp(l->service->name, svc, svclen) == 0 &&
		    (size_t)l->addrlen == addrlen && memcmp(&l->addr, addr, addrlen) == 0)
			return (int)k;
	}
	return -1;
}

struct session *
conn_adopt(struct worker *w, int fd, const char *state, size_t len, uint64_t *mark,
    char *why, size_t whylen)
{
	struct horead r = { state, len, 0, false };
	const char *svc, *laddr, *peer, *inbuf, *held, *out, *cpart, *spart;
	size_t svclen, laddrlen, peerlen, inlen, heldlen, outlen, clen, slen;
	uint32_t li, proto, ip_counted, discarding;
	uint64_t last_line, idle;
	struct session *c;
	int k;

	*mark = 0;
	li = hor_u32(&r);
	proto = hor_u32(&r);
	svc = hor_bytes(&r, &svclen, 64);
	laddr = hor_bytes(&r, &laddrlen, sizeof(struct sockaddr_storage));
	peer = hor_bytes(&r, &peerlen, sizeof(struct sockaddr_storage));
	ip_counted = hor_u32(&r);
	last_line = hor_u64(&r);
	idle = hor_u64(&r);
	discarding = hor_u32(&r);
	inbuf = hor_bytes(&r, &inlen, (size_t)w->cfg->max_line + 1);
	held = hor_bytes(&r, &heldlen, SIZE_MAX);
	out = hor_bytes(&r, &outlen, SIZE_MAX);
	cpart = hor_bytes(&r, &clen, HO_PART_MAX);
	spart = hor_bytes(&r, &slen, HO_PART_MAX);
	if (r.err || r.off != r.len || peerlen < sizeof(struct sockaddr_in)) {
		snprintf(why, whylen, "its state does not read back");
		return NULL;
	}
	if ((k = find_listener(w->cfg, li, proto, svc, svclen, laddr, laddrlen)) < 0) {
		snprintf(why, whylen, "its listener is not in the new configuration");
		return NULL;
	}
	if ((c = slot_for(w, fd)) == NULL) {
		snprintf(why, whylen, "no room for fd %d", fd);
		return NULL;
	}
	own(c);
	{
		int sndbuf = w->cfg->max_output / 2;

		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	}
	c->fd = fd;
	c->l = &w->cfg->listeners[k];
	c->svc = c->l->service;
	c->svc_idx = service_index(c->svc);
	c->svc_conf = c->l->svc_conf != NULL ? c->l->svc_conf : w->cfg->service_conf[c->svc_idx];
	c->codec = c->l->codec != NULL ? c->l->codec : &codec_line;
	c->cstate = NULL;
	c->goodbye_said = false;
	c->begun = true;
	atomic_store(&c->tick_ms, 0);
	atomic_store(&c->tick_due, false);
	atomic_store(&c->idle_ms, idle);
	c->closing = c->eof = false;
	c->ho_stay = false;
	c->out_full = c->out_dying = false;
	atomic_store(&c->kill, KILL_NONE);
	atomic_store(&c->stalled_ms, 0);
	atomic_store(&c->last_line_ms, last_line);
	memset(&c->peer_addr, 0, sizeof(c->peer_addr));
	memcpy(&c->peer_addr, peer, peerlen);
	sockaddr_text((struct sockaddr *)&c->peer_addr, c->peer, sizeof(c->peer));
	c->ip_counted = false;
	c->data = NULL;
	c->resource = NULL;
	c->heldbuf = NULL;
	c->heldlen = 0;
	framer_init(&c->in, (size_t)w->cfg->max_line);
	if (framer_restore(&c->in, inbuf, inlen, discarding != 0) != 0 ||
	    (heldlen > 0 && (c->heldbuf = malloc(heldlen)) == NULL) ||
	    (c->svc->session_size > 0 && (c->data = calloc(1, c->svc->session_size)) == NULL))
		goto fail;
	if (heldlen > 0)
		memcpy(c->heldbuf, held, heldlen);
	c->heldlen = heldlen;
	pthread_mutex_lock(&c->out_lock);
	c->out_off = c->out_len = 0;
	if (outlen > 0 && (c->out == NULL || c->out_cap < outlen)) {
		free(c->out);
		c->out_cap = 0;
		if ((c->out = malloc(outlen)) == NULL) {
			pthread_mutex_unlock(&c->out_lock);
			goto fail;
		}
		c->out_cap = outlen;
	}
	if (outlen > 0)
		memcpy(c->out, out, outlen);
	c->out_len = outlen;
	atomic_store(&c->open, true);
	pthread_mutex_unlock(&c->out_lock);
	if (c->codec->restore == NULL || c->codec->restore(c, cpart, clen) != 0) {
		snprintf(why, whylen, "the %s codec cannot take it", c->codec->name);
		goto fail_open;
	}
	if (slen > 0 && (c->svc->restore == NULL ||
	    c->svc->restore(c, spart, slen, mark) != 0)) {
		snprintf(why, whylen, "the %s service cannot take it", c->svc->name);
		goto fail_codec;
	}
	/* one place under max_connections and per address, now this worker's */
	if (ip_counted && w->cfg->max_connections_per_ip > 0) {
		iplimit_add(w->slot, (struct sockaddr *)&c->peer_addr);
		c->ip_counted = true;
	}
	note_fd(w, fd);
	atomic_fetch_add(&w->sb->conns, 1);
	atomic_fetch_add(&w->nconns, 1);
	atomic_fetch_add_explicit(&w->sb->svc_conns[c->svc_idx], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&SESSION_LC(c)->conns, 1, memory_order_relaxed); /* metrics */
	atomic_fetch_add_explicit(&w->sb->proto_conns[c->l->protocol], 1, memory_order_relaxed);
	log_debug("%s: adopted (%s, %s)", c->peer, c->svc->name, c->codec->name);
	return c;

fail_codec:
	if (c->codec->close != NULL)
		c->codec->close(c);
	else
		free(c->cstate);
	c->cstate = NULL;
fail_open:
	pthread_mutex_lock(&c->out_lock);
	atomic_store(&c->open, false);
	pthread_mutex_unlock(&c->out_lock);
	goto undo;
fail:
	snprintf(why, whylen, "out of memory");
undo:
	pthread_mutex_lock(&c->out_lock);
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = c->out_cap = 0;
	pthread_mutex_unlock(&c->out_lock);
	free(c->heldbuf);
	c->heldbuf = NULL;
	c->heldlen = 0;
	framer_reset(&c->in);
	free(c->data);
	c->data = NULL;
	c->fd = -1;		/* the caller closes its descriptor */
	c->begun = false;
	release(c);
	return NULL;
}

void
conn_tail(struct session *c, const char *buf, size_t len)
{
	if (c->svc->tail != NULL)
		c->svc->tail(c, buf, len);
}

void
conn_adopted(struct session *c)
{
	struct epoll_event ev;

	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
		log_warn("%s: cannot watch the connection", c->peer);
		conn_close(c, KILL_NONE);
		release(c);
		return;
	}
	/* send what was queued, then take up what the client had sent */
	atomic_fetch_or(&c->state, ST_PEND);
	conn_run(c);
}
