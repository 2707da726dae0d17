/*
 * forkd-bench - load generator for forkd's line services (echo first).
 *
 * It sends request lines over TCP and counts only replies it has verified:
 * the reply to a payload line must be  PREFIX PAYLOAD  followed by "\n" or
 * "\r\n" (whatever the server sends back).  With --prefix "" this is a plain
 * echo, and a byte-exact echo server returns exactly the bytes sent; --exact
 * also requires the reply's line ending to be the one that was sent.
 *
 * Modes
 *   rr     N connections (-c), each with one request in flight, payload of
 *          P bytes (-P), for D seconds (-d) after W seconds of warm-up (-w).
 *          Reports the rate and the latency distribution (send of the
 *          request to the verified reply).
 *   churn  connect, one request, verify the reply, close; as fast as
 *          possible with C concurrent (-c), or at a target rate (--rate, at
 *          most C in flight).  Latency is connect() to the verified reply.
 *          --sources K binds the client sockets to 127.0.0.1 .. 127.0.0.K in
 *          turn so that the ephemeral ports do not run out.
 *   hold   open K sessions (-k), check that each answers one request, keep
 *          them all open for H seconds (--hold-time), check each again.
 *          Opens at most C at a time (-c, default 512).
 *
 * Everything is bounded: rr and churn stop after W + D seconds; connecting
 * and waiting for a reply each time out after --timeout seconds (default 5,
 * counted as an error); hold stops opening sessions after 60 seconds.
 *
 * Output: human-readable lines, then exactly one line starting "SUMMARY "
 * made of space-separated key=value pairs.  The keys:
 *   all modes   mode label host port threads size errors, and errors by
 *               kind: err_refused err_reset err_timeout err_badreply
 *               (wrong or unexpected bytes) err_eof (closed before the
 *               reply) err_noaddr (no local address/port left) err_nofile
 *               (out of descriptors) err_other
 *   rr          conns warmup duration requests (verified in the measured
 *               window) all_requests (verified, warm-up included) rate
 *               p50_us p90_us p99_us max_us mean_us
 *   churn       conns target_rate (0 = as fast as possible) sources warmup
 *               duration requests (= verified connections in the measured
 *               window) all_requests (warm-up included) missed (starts
 *               skipped because C were already in flight) rate p50_us
 *               p90_us p99_us max_us mean_us
 *   hold        sessions hold_time ok_start ok_end dropped (closed by the
 *               server while held) open_s (time to open them all)
 * Rates are per second over the measured duration; latencies are in
 * microseconds, taken from a log-linear histogram (< 1% relative error,
 * upper bound of the bucket; max is exact).  label is "-" unless --label.
 *
 * Exit status: 0 ok; 1 errors > 0 or no verified request (rr, churn), or
 * any session failed (hold); 2 bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define NSEC		1000000000ull
#define MSEC		1000000ull
#define MAX_PREFIX	256
#define MAX_SIZE	(1024 * 1024)
#define HOLD_OPEN_CAP	(60 * NSEC)	/* hold stops opening sessions after this */
#define RETRY_DELAY	(50 * MSEC)	/* rr reconnects this long after an error */
#define SWEEP_EVERY	(20 * MSEC)

enum mode { MODE_RR, MODE_CHURN, MODE_HOLD };

enum err_kind {
	E_REFUSED, E_RESET, E_TIMEOUT, E_BADREPLY, E_EOF, E_NOADDR, E_NOFILE, E_OTHER,
	E_NKINDS
};
static const char *const err_names[E_NKINDS] = {
	"refused", "reset", "timeout", "badreply", "eof", "noaddr", "nofile", "other"
};

static struct {
	enum mode	 mode;
	const char	*host;
	const char	*port;
	unsigned	 conns;
	int		 conns_set;
	size_t		 size;
	double		 duration;
	double		 warmup;
	unsigned	 threads;
	unsigned	 sessions;
	double		 hold_time;
	double		 rate;
	unsigned	 sources;
	const char	*prefix;
	size_t		 plen;
	int		 crlf;
	int		 exact;
	double		 timeout;
	const char	*label;
} opt = {
	.host = "127.0.0.1", .conns = 50, .size = 16, .duration = 10,
	.warmup = 1, .threads = 1, .sessions = 1000, .hold_time = 5,
	.prefix = "Echo: ", .timeout = 5, .label = "-",
};

/* ---- time ---------------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

/* ---- log-linear latency histogram (values in ns) ------------------------- */
/*
 * Values below 128 have a bucket each; above, every power of two is split in
 * 64 linear buckets, so a bucket is at most 1/64 of its value wide.
 */
#define H_SUB		64u
#define H_EXP_MAX	40u	/* up to 2^46 ns, far beyond any timeout */
#define H_BUCKETS	((H_EXP_MAX + 2) * H_SUB)

struct hist {
	uint64_t	count;
	uint64_t	max;
	uint64_t	sum;
	uint64_t	b[H_BUCKETS];
};

static unsigned hist_index(uint64_t v)
{
	unsigned msb, e;

	if (v < 2 * H_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	e = msb - 6u;
	if (e > H_EXP_MAX)
		return H_BUCKETS - 1;
	return e * H_SUB + (unsigned)(v >> e);
}

/* the highest value that falls in bucket idx */
static uint64_t hist_upper(unsigned idx)
{
	unsigned e, m;

	if (idx < 2 * H_SUB)
		return idx;
	e = idx / H_SUB - 1;
	m = idx % H_SUB + H_SUB;
	return (((uint64_t)m + 1) << e) - 1;
}

static void hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

static void hist_merge(struct hist *dst, const struct hist *src)
{
	unsigned i;

	for (i = 0; i < H_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->count += src->count;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
}

static uint64_t hist_pct(const struct hist *h, double pct)
{
	uint64_t want, seen = 0;
	unsigned i;

	if (h->count == 0)
		return 0;
	want = (uint64_t)ceil(pct / 100.0 * (double)h->count);
	if (want < 1)
		want = 1;
	for (i = 0; i < H_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want) {
			uint64_t v = hist_upper(i);
			return v < h->max ? v : h->max;
		}
	}
	return h->max;
}

static unsigned long long us_round(uint64_t ns)
{
	return (unsigned long long)((ns + 500) / 1000);
}

/* ---- connections and workers ---------------------------------------------- */

enum cstate {
	C_FREE,		/* no socket */
	C_CONNECTING,
	C_SENDING,	/* request partly written */
	C_WAITING,	/* request written, waiting for the reply */
	C_HELD,		/* hold: verified once, idle */
	C_DEAD,		/* hold: failed, not retried */
	C_RETRY,	/* rr: reconnect at deadline */
};

struct conn {
	int		 fd;
	enum cstate	 state;
	uint32_t	 evmask;	/* what is registered with epoll, 0 = not */
	uint32_t	 seq;
	uint64_t	 t_conn;	/* connect() called */
	uint64_t	 t_req;		/* first byte of the request written */
	uint64_t	 deadline;
	size_t		 out_off;
	size_t		 in_len;
	char		*req;		/* payload + line ending */
	char		*in;
};

struct worker {
	pthread_t	 th;
	unsigned	 idx;
	int		 ep;
	struct conn	*conns;
	unsigned	 nconns;
	unsigned	 inflight;
	uint64_t	 attempts;
	struct hist	 h;
	uint64_t	 requests;	/* verified in the measured window */
	uint64_t	 all;		/* verified, warm-up included */
	uint64_t	 errors[E_NKINDS];
	uint64_t	 missed;
	int		 phase;		/* hold: 1 opening, 2 holding, 3 checking */
	unsigned	 resolved;
	uint64_t	 ok_start, ok_end, dropped;
	uint64_t	 t_opened;
};

static struct sockaddr_storage dst_addr;
static socklen_t dst_len;
static size_t req_len;		/* payload + line ending */
static size_t in_cap;		/* longest acceptable reply + 1 */
static uint64_t t_start, t_measure, t_end;
static _Atomic uint64_t hold_end;
static pthread_barrier_t barrier;
static atomic_int bad_reply_shown;
static struct worker *workers;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("forkd-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);

	if (p == NULL)
		die("out of memory");
	return p;
}

static enum err_kind classify(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return E_REFUSED;
	case ECONNRESET:
	case EPIPE:
	case ECONNABORTED:
		return E_RESET;
	case ETIMEDOUT:
		return E_TIMEOUT;
	case EADDRNOTAVAIL:
	case EADDRINUSE:
		return E_NOADDR;
	case EMFILE:
	case ENFILE:
		return E_NOFILE;
	default:
		return E_OTHER;
	}
}

static void set_events(struct worker *w, struct conn *c, uint32_t mask)
{
	struct epoll_event ev;

	if (mask == c->evmask)
		return;
	ev.events = mask;
	ev.data.ptr = c;
	if (epoll_ctl(w->ep, c->evmask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
	    c->fd, &ev) == -1)
		die("epoll_ctl: %s", strerror(errno));
	c->evmask = mask;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);	/* also drops it from the epoll set */
	c->fd = -1;
	c->evmask = 0;
	c->in_len = 0;
	c->out_off = 0;
}

static void show_bad_reply(const char *buf, size_t len)
{
	char out[200];
	size_t i, o = 0;

	if (atomic_exchange(&bad_reply_shown, 1))
		return;
	for (i = 0; i < len && o < sizeof(out) - 8; i++) {
		unsigned char ch = (unsigned char)buf[i];

		if (ch == '\r')
			o += (size_t)snprintf(out + o, sizeof(out) - o, "\\r");
		else if (ch == '\n')
			o += (size_t)snprintf(out + o, sizeof(out) - o, "\\n");
		else if (ch < 32 || ch > 126 || ch == '\\')
			o += (size_t)snprintf(out + o, sizeof(out) - o, "\\x%02x", ch);
		else
			out[o++] = (char)ch;
	}
	out[o] = '\0';
	fprintf(stderr, "forkd-bench: unexpected reply (first one shown, %zu bytes): \"%s%s\"\n",
	    len, out, i < len ? "..." : "");
}

/* Write the request's sequence number into its first bytes, as hex. */
static void stamp_request(struct conn *c)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = opt.size < 8 ? opt.size : 8, i;
	uint32_t v = ++c->seq;

	for (i = 0; i < n; i++) {
		c->req[n - 1 - i] = hex[v & 15];
		v >>= 4;
	}
}

static void conn_fail(struct worker *w, struct conn *c, enum err_kind kind);
static void conn_done(struct worker *w, struct conn *c, uint64_t now);

static void conn_flush(struct worker *w, struct conn *c)
{
	while (c->out_off < req_len) {
		ssize_t n = send(c->fd, c->req + c->out_off,
		    req_len - c->out_off, MSG_NOSIGNAL);

		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			c->state = C_SENDING;
			set_events(w, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
			return;
		}
		conn_fail(w, c, classify(n < 0 ? errno : EPIPE));
		return;
	}
	c->state = C_WAITING;
	set_events(w, c, EPOLLIN | EPOLLRDHUP);
}

static void conn_request(struct worker *w, struct conn *c, uint64_t now)
{
	stamp_request(c);
	c->t_req = now;
	c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
	c->out_off = 0;
	c->in_len = 0;
	conn_flush(w, c);
}

/* Open a connection; the request goes out once it is established. */
static void conn_start(struct worker *w, struct conn *c, uint64_t now)
{
	int fd, one = 1;

	c->t_conn = now;
	c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
	c->in_len = 0;
	c->out_off = 0;
	c->evmask = 0;
	w->attempts++;
	w->inflight++;
	fd = socket(dst_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		c->fd = -1;
		conn_fail(w, c, classify(errno));
		return;
	}
	c->fd = fd;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (opt.sources > 0) {
		struct sockaddr_in src;
		unsigned k = (unsigned)((w->attempts * opt.threads + w->idx) % opt.sources);

		memset(&src, 0, sizeof(src));
		src.sin_family = AF_INET;
		src.sin_addr.s_addr = htonl(0x7f000001u + k);
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&src, sizeof(src)) == -1) {
			conn_fail(w, c, classify(errno));
			return;
		}
	}
	if (connect(fd, (struct sockaddr *)&dst_addr, dst_len) == 0) {
		conn_request(w, c, now);
		return;
	}
	if (errno != EINPROGRESS) {
		conn_fail(w, c, classify(errno));
		return;
	}
	c->state = C_CONNECTING;
	set_events(w, c, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
}

/* Check one complete line (including its '\n') against the request. */
static int reply_ok(const struct conn *c, const char *line, size_t len)
{
	size_t body = len - 1;
	size_t plen = req_len - opt.size;	/* line ending sent */

	if (body > 0 && line[body - 1] == '\r')
		body--;
	if (opt.exact && len - body != plen)
		return 0;
	return body == opt.plen + opt.size &&
	    memcmp(line, opt.prefix, opt.plen) == 0 &&
	    memcmp(line + opt.plen, c->req, opt.size) == 0;
}

static void conn_read(struct worker *w, struct conn *c)
{
	for (;;) {
		ssize_t n = read(c->fd, c->in + c->in_len, in_cap - c->in_len);

		if (n > 0) {
			char *nl = memchr(c->in + c->in_len, '\n', (size_t)n);

			c->in_len += (size_t)n;
			if (c->state == C_HELD) {
				/* nothing may arrive while a session is held */
				show_bad_reply(c->in, c->in_len);
				conn_fail(w, c, E_BADREPLY);
				return;
			}
			if (nl != NULL) {
				size_t len = (size_t)(nl - c->in) + 1;

				if (len != c->in_len || c->state != C_WAITING ||
				    !reply_ok(c, c->in, len)) {
					show_bad_reply(c->in, c->in_len);
					conn_fail(w, c, E_BADREPLY);
					return;
				}
				conn_done(w, c, now_ns());
				return;
			}
			if (c->in_len >= in_cap) {
				show_bad_reply(c->in, c->in_len);
				conn_fail(w, c, E_BADREPLY);
				return;
			}
			continue;
		}
		if (n == 0) {
			if (c->in_len > 0)
				show_bad_reply(c->in, c->in_len);
			conn_fail(w, c, c->in_len > 0 ? E_BADREPLY : E_EOF);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		conn_fail(w, c, classify(errno));
		return;
	}
}

static void conn_event(struct worker *w, struct conn *c, uint32_t ev)
{
	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (err != 0) {
			conn_fail(w, c, classify(err));
			return;
		}
		if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		if (ev & (EPOLLERR | EPOLLHUP)) {
			conn_fail(w, c, E_RESET);
			return;
		}
		conn_request(w, c, now_ns());
		return;
	}
	if (c->state == C_SENDING && (ev & EPOLLOUT)) {
		conn_flush(w, c);
		if (c->state != C_SENDING && c->state != C_WAITING)
			return;
	}
	if ((c->state == C_SENDING || c->state == C_WAITING || c->state == C_HELD) &&
	    (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
		conn_read(w, c);
}

/* A verified reply. */
static void conn_done(struct worker *w, struct conn *c, uint64_t now)
{
	switch (opt.mode) {
	case MODE_RR:
		w->all++;
		if (now >= t_measure && now < t_end) {
			w->requests++;
			hist_add(&w->h, now - c->t_req);
		}
		if (now < t_end) {
			conn_request(w, c, now);
		} else {
			conn_close(c);
			c->state = C_FREE;
			w->inflight--;
		}
		break;
	case MODE_CHURN:
		w->all++;
		if (now >= t_measure && now < t_end) {
			w->requests++;
			hist_add(&w->h, now - c->t_conn);
		}
		conn_close(c);
		c->state = C_FREE;
		w->inflight--;
		break;
	case MODE_HOLD:
		c->in_len = 0;
		c->state = C_HELD;
		c->deadline = UINT64_MAX;
		w->inflight--;
		w->resolved++;
		if (w->phase == 1) {
			w->ok_start++;
			w->t_opened = now;
		} else {
			w->ok_end++;
		}
		break;
	}
}

static void conn_fail(struct worker *w, struct conn *c, enum err_kind kind)
{
	enum cstate was = c->state;

	conn_close(c);
	switch (opt.mode) {
	case MODE_RR:
		w->errors[kind]++;
		c->state = C_RETRY;
		c->deadline = now_ns() + RETRY_DELAY;
		w->inflight--;
		break;
	case MODE_CHURN:
		w->errors[kind]++;
		c->state = C_FREE;
		w->inflight--;
		break;
	case MODE_HOLD:
		c->state = C_DEAD;
		if (was == C_HELD) {
			/* the server let go of a held session */
			w->dropped++;
			if (kind != E_EOF)
				w->errors[kind]++;
		} else {
			w->errors[kind]++;
			w->inflight--;
			w->resolved++;
		}
		break;
	}
}

static void sweep(struct worker *w, uint64_t now)
{
	unsigned i;

	for (i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		switch (c->state) {
		case C_CONNECTING:
		case C_SENDING:
		case C_WAITING:
			if (now >= c->deadline)
				conn_fail(w, c, E_TIMEOUT);
			break;
		case C_RETRY:
			if (now >= c->deadline && now < t_end)
				conn_start(w, c, now);
			break;
		default:
			break;
		}
	}
}

static void poll_once(struct worker *w, int timeout_ms)
{
	struct epoll_event evs[256];
	int n, i;

	n = epoll_wait(w->ep, evs, 256, timeout_ms);
	if (n == -1) {
		if (errno == EINTR)
			return;
		die("epoll_wait: %s", strerror(errno));
	}
	for (i = 0; i < n; i++) {
		struct conn *c = evs[i].data.ptr;

		if (c->fd >= 0)
			conn_event(w, c, evs[i].events);
	}
}

static int ms_until(uint64_t when, uint64_t now, int cap)
{
	uint64_t d;

	if (when <= now)
		return 0;
	d = (when - now + MSEC - 1) / MSEC;
	return d > (uint64_t)cap ? cap : (int)d;
}

static void close_all(struct worker *w)
{
	unsigned i;

	for (i = 0; i < w->nconns; i++)
		conn_close(&w->conns[i]);
}

static void run_rr(struct worker *w)
{
	uint64_t now = now_ns(), last_sweep = now;
	unsigned i;

	for (i = 0; i < w->nconns; i++)
		conn_start(w, &w->conns[i], now);
	while ((now = now_ns()) < t_end) {
		poll_once(w, ms_until(t_end, now, 10));
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}
}

static void run_churn(struct worker *w)
{
	uint64_t now = now_ns(), last_sweep = now, next = now, interval = 0;
	unsigned i, freei = 0;

	if (opt.rate > 0)
		interval = (uint64_t)((double)NSEC * opt.threads / opt.rate);
	while ((now = now_ns()) < t_end) {
		int timeout = 10;

		if (opt.rate > 0) {
			while (next <= now) {
				if (w->inflight < w->nconns) {
					for (i = 0; i < w->nconns; i++) {
						freei = (freei + 1) % w->nconns;
						if (w->conns[freei].state == C_FREE)
							break;
					}
					conn_start(w, &w->conns[freei], now);
				} else if (next >= t_measure) {
					w->missed++;
				}
				next += interval;
			}
			timeout = ms_until(next, now, 10);
		} else {
			uint64_t errs_before = 0, errs_after = 0;

			for (i = 0; i < E_NKINDS; i++)
				errs_before += w->errors[i];
			for (i = 0; i < w->nconns && w->inflight < w->nconns; i++)
				if (w->conns[i].state == C_FREE)
					conn_start(w, &w->conns[i], now);
			for (i = 0; i < E_NKINDS; i++)
				errs_after += w->errors[i];
			/* failing at once (no ports, refused): do not spin */
			timeout = errs_after > errs_before ? 1 : 10;
		}
		poll_once(w, ms_until(t_end, now, timeout));
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}
}

static void run_hold(struct worker *w, unsigned cap)
{
	uint64_t now = now_ns(), last_sweep = now;
	unsigned next = 0, i, pending;

	w->phase = 1;
	while (w->resolved < w->nconns) {
		now = now_ns();
		if (now - t_start < HOLD_OPEN_CAP) {
			while (w->inflight < cap && next < w->nconns)
				conn_start(w, &w->conns[next++], now);
		} else if (w->inflight == 0) {
			/* out of time to open the rest: they count as failed */
			for (; next < w->nconns; next++) {
				w->conns[next].state = C_DEAD;
				w->errors[E_TIMEOUT]++;
				w->resolved++;
			}
			break;
		}
		poll_once(w, 10);
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}

	if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
		uint64_t ok = 0, t_open = t_start;

		for (i = 0; i < opt.threads; i++) {
			ok += workers[i].ok_start;
			if (workers[i].t_opened > t_open)
				t_open = workers[i].t_opened;
		}
		printf("opened %" PRIu64 " of %u sessions in %.2f s\n", ok,
		    opt.sessions, (double)(t_open - t_start) / NSEC);
		printf("holding %" PRIu64 " sessions open for %.2f s\n", ok,
		    opt.hold_time);
		fflush(stdout);
		atomic_store(&hold_end, now_ns() + (uint64_t)(opt.hold_time * (double)NSEC));
	}
	pthread_barrier_wait(&barrier);

	w->phase = 2;
	while ((now = now_ns()) < atomic_load(&hold_end))
		poll_once(w, ms_until(atomic_load(&hold_end), now, 100));

	w->phase = 3;
	w->resolved = 0;
	pending = 0;
	now = now_ns();
	for (i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		if (c->state == C_HELD) {
			pending++;
			w->inflight++;
			conn_request(w, c, now);
		}
	}
	last_sweep = now;
	while (w->resolved < pending) {
		poll_once(w, 10);
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	switch (opt.mode) {
	case MODE_RR:
		run_rr(w);
		break;
	case MODE_CHURN:
		run_churn(w);
		break;
	case MODE_HOLD: {
		unsigned cap = opt.conns_set ? opt.conns : 512;

		cap = (cap + opt.threads - 1) / opt.threads;
		run_hold(w, cap ? cap : 1);
		break;
	}
	}
	close_all(w);
	return NULL;
}

/* ---- setup ----------------------------------------------------------------- */

static void raise_nofile(unsigned long need)
{
	struct rlimit rl;
	rlim_t was;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return;
	was = rl.rlim_cur;
	if (rl.rlim_cur < need && rl.rlim_max < need) {
		/* privileged: the hard limit can go up as well */
		struct rlimit up = { need, need };

		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl = up;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != was)
		printf("open-file limit raised from %llu to %llu\n",
		    (unsigned long long)was, (unsigned long long)rl.rlim_cur);
	if (rl.rlim_cur < need)
		fprintf(stderr, "forkd-bench: warning: this run needs about %lu descriptors "
		    "but the open-file limit is %llu (hard limit %llu); raise it "
		    "(ulimit -Hn) or expect errors\n", need,
		    (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
}

static void resolve(void)
{
	struct addrinfo hints, *res;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(opt.host, opt.port, &hints, &res);
	if (rc != 0 || res == NULL) {
		fprintf(stderr, "forkd-bench: cannot resolve %s port %s: %s\n",
		    opt.host, opt.port, gai_strerror(rc));
		exit(2);
	}
	memcpy(&dst_addr, res->ai_addr, res->ai_addrlen);
	dst_len = res->ai_addrlen;
	freeaddrinfo(res);
	if (opt.sources > 0 && dst_addr.ss_family != AF_INET) {
		fprintf(stderr, "forkd-bench: --sources needs an IPv4 --host\n");
		exit(2);
	}
}

static void usage(FILE *f)
{
	fputs(
"usage: forkd-bench MODE --port PORT [options]\n"
"modes:\n"
"  rr       round trips: N connections, one request in flight each\n"
"  churn    connect, one request, verify, close; repeatedly\n"
"  hold     open K sessions, verify, hold them, verify again\n"
"options:\n"
"  -H, --host ADDR        server address (default 127.0.0.1)\n"
"  -p, --port PORT        server port (required)\n"
"  -c, --connections N    rr: connections (50); churn: concurrent (50);\n"
"                         hold: sessions opened at a time (512)\n"
"  -P, --size BYTES       payload bytes per request line (16)\n"
"  -d, --duration SEC     measured time, rr and churn (10)\n"
"  -w, --warmup SEC       warm-up before measuring, rr and churn (1)\n"
"  -t, --threads N        client threads (1)\n"
"  -k, --sessions K       hold: sessions (1000)\n"
"      --hold-time SEC    hold: how long to keep them open (5)\n"
"  -r, --rate N           churn: target connections per second (as fast as possible)\n"
"  -s, --sources K        bind client sockets to 127.0.0.1..127.0.0.K in turn\n"
"  -x, --prefix TEXT      expected reply prefix (\"Echo: \"; \"\" = plain echo)\n"
"      --lf | --crlf      line ending sent (--lf)\n"
"      --exact            the reply must end with the line ending sent\n"
"      --timeout SEC      connect and reply timeout (5)\n"
"  -l, --label NAME       copied into the SUMMARY line\n"
"  -h, --help             this text\n"
"The last line printed is the machine-readable SUMMARY line.\n", f);
}

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void bad(const char *fmt, ...)
{
	va_list ap;

	fputs("forkd-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n(forkd-bench --help for usage)\n", stderr);
	exit(2);
}

static unsigned long parse_uint(const char *name, const char *s,
    unsigned long lo, unsigned long hi)
{
	char *end;
	unsigned long v;

	errno = 0;
	if (*s == '-' || *s == '\0')
		bad("%s: '%s' is not a number from %lu to %lu", name, s, lo, hi);
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		bad("%s: '%s' is not a number from %lu to %lu", name, s, lo, hi);
	return v;
}

static double parse_sec(const char *name, const char *s, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi))
		bad("%s: '%s' is not a number from %g to %g", name, s, lo, hi);
	return v;
}

enum { O_HOLD = 256, O_LF, O_CRLF, O_EXACT, O_TIMEOUT };

static void parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "connections", required_argument, NULL, 'c' },
		{ "size", required_argument, NULL, 'P' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "threads", required_argument, NULL, 't' },
		{ "sessions", required_argument, NULL, 'k' },
		{ "hold-time", required_argument, NULL, O_HOLD },
		{ "rate", required_argument, NULL, 'r' },
		{ "sources", required_argument, NULL, 's' },
		{ "prefix", required_argument, NULL, 'x' },
		{ "lf", no_argument, NULL, O_LF },
		{ "crlf", no_argument, NULL, O_CRLF },
		{ "exact", no_argument, NULL, O_EXACT },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "label", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	const char *m;
	unsigned long port;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":H:p:c:P:d:w:t:k:r:s:x:l:h",
	    longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': opt.host = optarg; break;
		case 'p':
			port = parse_uint("--port", optarg, 1, 65535);
			(void)port;
			opt.port = optarg;
			break;
		case 'c':
			opt.conns = (unsigned)parse_uint("--connections", optarg, 1, 1000000);
			opt.conns_set = 1;
			break;
		case 'P': opt.size = parse_uint("--size", optarg, 1, MAX_SIZE); break;
		case 'd': opt.duration = parse_sec("--duration", optarg, 0.1, 86400); break;
		case 'w': opt.warmup = parse_sec("--warmup", optarg, 0, 3600); break;
		case 't': opt.threads = (unsigned)parse_uint("--threads", optarg, 1, 256); break;
		case 'k': opt.sessions = (unsigned)parse_uint("--sessions", optarg, 1, 1000000); break;
		case O_HOLD: opt.hold_time = parse_sec("--hold-time", optarg, 0, 86400); break;
		case 'r': opt.rate = parse_sec("--rate", optarg, 1, 1e8); break;
		case 's': opt.sources = (unsigned)parse_uint("--sources", optarg, 1, 254); break;
		case 'x':
			if (strlen(optarg) > MAX_PREFIX)
				bad("--prefix: longer than %d bytes", MAX_PREFIX);
			if (strpbrk(optarg, "\r\n") != NULL)
				bad("--prefix: may not contain a line ending");
			opt.prefix = optarg;
			break;
		case O_LF: opt.crlf = 0; break;
		case O_CRLF: opt.crlf = 1; break;
		case O_EXACT: opt.exact = 1; break;
		case O_TIMEOUT: opt.timeout = parse_sec("--timeout", optarg, 0.01, 3600); break;
		case 'l':
			if (*optarg == '\0' || strpbrk(optarg, " \t\r\n=") != NULL)
				bad("--label: must be non-empty, without spaces or '='");
			opt.label = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			bad("option %s needs a value", argv[optind - 1]);
		default:
			if (optopt != 0)
				bad("unknown option -%c", optopt);
			bad("unknown option %s", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		bad("no mode given (rr, churn or hold)");
	m = argv[optind++];
	if (strcmp(m, "rr") == 0)
		opt.mode = MODE_RR;
	else if (strcmp(m, "churn") == 0)
		opt.mode = MODE_CHURN;
	else if (strcmp(m, "hold") == 0)
		opt.mode = MODE_HOLD;
	else
		bad("unknown mode '%s' (rr, churn or hold)", m);
	if (optind < argc)
		bad("unexpected argument '%s'", argv[optind]);
	if (opt.port == NULL)
		bad("--port is required");
	opt.plen = strlen(opt.prefix);
}

static void print_errors(const uint64_t *errs, uint64_t total)
{
	unsigned i;
	int first = 1;

	printf("errors: %" PRIu64, total);
	for (i = 0; i < E_NKINDS; i++) {
		if (errs[i] == 0)
			continue;
		printf("%s%s %" PRIu64, first ? " (" : ", ", err_names[i], errs[i]);
		first = 0;
	}
	printf("%s\n", first ? "" : ")");
}

static void summary_errors(const uint64_t *errs, uint64_t total)
{
	unsigned i;

	printf(" errors=%" PRIu64, total);
	for (i = 0; i < E_NKINDS; i++)
		printf(" err_%s=%" PRIu64, err_names[i], errs[i]);
}

int main(int argc, char **argv)
{
	struct hist *h;
	uint64_t errs[E_NKINDS] = { 0 }, nerr = 0, requests = 0, all = 0, missed = 0;
	uint64_t ok_start = 0, ok_end = 0, dropped = 0, t_open = 0;
	unsigned long need;
	unsigned units, i, j;
	int rc = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	parse_args(argc, argv);
	resolve();

	units = opt.mode == MODE_HOLD ? opt.sessions : opt.conns;
	if (opt.threads > units)
		opt.threads = units;
	need = (unsigned long)units + 32 + 2 * opt.threads;
	raise_nofile(need);

	req_len = opt.size + (opt.crlf ? 2 : 1);
	in_cap = opt.plen + opt.size + 2 + 1;

	workers = xcalloc(opt.threads, sizeof(*workers));
	for (i = 0; i < opt.threads; i++) {
		struct worker *w = &workers[i];

		w->idx = i;
		w->nconns = units / opt.threads + (i < units % opt.threads);
		w->conns = xcalloc(w->nconns, sizeof(*w->conns));
		w->ep = epoll_create1(EPOLL_CLOEXEC);
		if (w->ep == -1)
			die("epoll_create1: %s", strerror(errno));
		for (j = 0; j < w->nconns; j++) {
			struct conn *c = &w->conns[j];
			size_t k;

			c->fd = -1;
			c->req = xcalloc(1, req_len + 1);
			c->in = xcalloc(1, in_cap + 1);
			for (k = 0; k < opt.size; k++)
				c->req[k] = "abcdefghijklmnopqrstuvwxyz0123456789"[(k + j) % 36];
			memcpy(c->req + opt.size, opt.crlf ? "\r\n" : "\n", opt.crlf ? 2 : 1);
			c->seq = (uint32_t)((i * 1000003u + j) * 7919u);
		}
	}

	switch (opt.mode) {
	case MODE_RR:
		printf("rr: %s port %s, %u connections, %zu-byte payload, %u thread(s), "
		    "%.2f s warm-up + %.2f s\n", opt.host, opt.port, opt.conns,
		    opt.size, opt.threads, opt.warmup, opt.duration);
		break;
	case MODE_CHURN:
		if (opt.rate > 0)
			printf("churn: %s port %s, target %.0f connections/s, at most %u "
			    "in flight, ", opt.host, opt.port, opt.rate, opt.conns);
		else
			printf("churn: %s port %s, %u concurrent, as fast as possible, ",
			    opt.host, opt.port, opt.conns);
		printf("%zu-byte payload, %u thread(s), %u source address(es), "
		    "%.2f s warm-up + %.2f s\n", opt.size, opt.threads,
		    opt.sources ? opt.sources : 1, opt.warmup, opt.duration);
		break;
	case MODE_HOLD:
		printf("hold: %s port %s, %u sessions, %zu-byte payload, %u thread(s), "
		    "hold %.2f s\n", opt.host, opt.port, opt.sessions, opt.size,
		    opt.threads, opt.hold_time);
		break;
	}

	if (pthread_barrier_init(&barrier, NULL, opt.threads) != 0)
		die("pthread_barrier_init failed");
	t_start = now_ns();
	t_measure = t_start + (uint64_t)(opt.warmup * (double)NSEC);
	t_end = t_measure + (uint64_t)(opt.duration * (double)NSEC);
	for (i = 0; i < opt.threads; i++) {
		int err = pthread_create(&workers[i].th, NULL, worker_main, &workers[i]);

		if (err != 0)
			die("pthread_create: %s", strerror(err));
	}
	h = xcalloc(1, sizeof(*h));
	for (i = 0; i < opt.threads; i++) {
		struct worker *w = &workers[i];

		pthread_join(w->th, NULL);
		hist_merge(h, &w->h);
		for (j = 0; j < E_NKINDS; j++) {
			errs[j] += w->errors[j];
			nerr += w->errors[j];
		}
		requests += w->requests;
		all += w->all;
		missed += w->missed;
		ok_start += w->ok_start;
		ok_end += w->ok_end;
		dropped += w->dropped;
		if (w->t_opened > t_open)
			t_open = w->t_opened;
	}

	if (opt.mode == MODE_HOLD) {
		printf("answered at start: %" PRIu64 " of %u; after %.2f s held: %" PRIu64
		    " (%" PRIu64 " closed by the server meanwhile)\n", ok_start,
		    opt.sessions, opt.hold_time, ok_end, dropped);
		print_errors(errs, nerr);
		printf("SUMMARY mode=hold label=%s host=%s port=%s threads=%u size=%zu "
		    "sessions=%u hold_time=%.2f ok_start=%" PRIu64 " ok_end=%" PRIu64
		    " dropped=%" PRIu64 " open_s=%.2f", opt.label, opt.host, opt.port,
		    opt.threads, opt.size, opt.sessions, opt.hold_time, ok_start, ok_end,
		    dropped, t_open > t_start ? (double)(t_open - t_start) / NSEC : 0.0);
		summary_errors(errs, nerr);
		printf("\n");
		rc = (ok_start == opt.sessions && ok_end == opt.sessions) ? 0 : 1;
	} else {
		double rate = (double)requests / opt.duration;
		unsigned long long p50 = us_round(hist_pct(h, 50));
		unsigned long long p90 = us_round(hist_pct(h, 90));
		unsigned long long p99 = us_round(hist_pct(h, 99));
		unsigned long long pmax = us_round(h->max);
		unsigned long long mean = h->count ? us_round(h->sum / h->count) : 0;

		printf("%s: %" PRIu64 " in %.2f s = %.1f/s\n",
		    opt.mode == MODE_RR ? "requests" : "connections", requests,
		    opt.duration, rate);
		printf("latency (%s), us: p50 %llu, p90 %llu, p99 %llu, max %llu, mean %llu\n",
		    opt.mode == MODE_RR ? "request to reply" : "connect to reply",
		    p50, p90, p99, pmax, mean);
		if (opt.mode == MODE_CHURN && opt.rate > 0)
			printf("missed starts (all %u in flight): %" PRIu64 "\n",
			    opt.conns, missed);
		print_errors(errs, nerr);
		if (opt.mode == MODE_RR)
			printf("SUMMARY mode=rr label=%s host=%s port=%s threads=%u size=%zu "
			    "conns=%u warmup=%.2f duration=%.2f requests=%" PRIu64,
			    opt.label, opt.host, opt.port, opt.threads, opt.size,
			    opt.conns, opt.warmup, opt.duration, requests);
		else
			printf("SUMMARY mode=churn label=%s host=%s port=%s threads=%u size=%zu "
			    "conns=%u target_rate=%.0f sources=%u warmup=%.2f duration=%.2f "
			    "requests=%" PRIu64 " missed=%" PRIu64, opt.label, opt.host,
			    opt.port, opt.threads, opt.size, opt.conns, opt.rate,
			    opt.sources, opt.warmup, opt.duration, requests, missed);
		printf(" all_requests=%" PRIu64, all);
		summary_errors(errs, nerr);
		printf(" rate=%.1f p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu mean_us=%llu\n",
		    rate, p50, p90, p99, pmax, mean);
		rc = (nerr > 0 || requests == 0) ? 1 : 0;
	}
	return rc;
}
