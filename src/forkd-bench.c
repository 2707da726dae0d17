/*
 * forkd-bench - load generator for forkd's line, WebSocket and chat services.
 *
 * It sends request lines over TCP and counts only replies it has verified:
 * the reply to a payload line must be  PREFIX PAYLOAD  followed by "\n" or
 * "\r\n" (whatever the server sends back).  With --prefix "" this is a plain
 * echo, and a byte-exact echo server returns exactly the bytes sent; --exact
 * also requires the reply's line ending to be the one that was sent.
 *
 * --ws PATH speaks RFC 6455 instead: an HTTP/1.1 Upgrade to PATH whose 101
 * must carry Upgrade, Connection and the Sec-WebSocket-Accept due for the
 * key sent (SHA-1 and base64 from nettle); then one request is one masked
 * text message of the payload, and one reply is one text message
 * PREFIX PAYLOAD (a trailing "\n" or "\r\n" is allowed, --exact allows
 * none).  Pings are answered; a close frame ends the connection.
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
 *   fanout N members (-c, the sender included) join a chat room, spread
 *          over the servers given (--port P1,P2 or --connect H:P,H:P; the
 *          sender on the first); one sends R messages/s (--rate) for D
 *          seconds, each "fb RUN SEQ SEND_TIME_NS" padded to -P bytes, and
 *          every other member must receive every message.  Lines: members
 *          send "/join ROOM" (the sender "/nick fbsRUN" first) and are in
 *          once "* you joined ROOM" or "* you are already in ROOM" arrives;
 *          messages arrive as "[nick] text".  WebSocket: members are in
 *          once the handshake is done, send {"message": "..."}, and take a
 *          message's "message" string as its text (without one: the text
 *          after "[nick] ", or the whole text).
 *          Before the first message the sender repeats a sync message
 *          until every member has seen one (at most --sync-wait seconds),
 *          and after the last it waits up to --drain seconds for the
 *          deliveries still due.
 *
 * Everything is bounded: rr and churn stop after W + D seconds; connecting
 * and waiting for a reply each time out after --timeout seconds (default 5,
 * counted as an error); hold and fanout stop opening sessions after 60
 * seconds; fanout sends at most 10,000,000 messages, queues at most 256 KiB
 * to the server, and takes lines and messages of up to 16 KiB.
 *
 * Output: human-readable lines, then exactly one line starting "SUMMARY "
 * made of space-separated key=value pairs.  The keys:
 *   all modes   mode label host port ws threads size errors, and errors by
 *               kind: err_refused err_reset err_timeout err_badreply
 *               (wrong or unexpected bytes) err_eof (closed before the
 *               reply) err_noaddr (no local address/port left) err_nofile
 *               (out of descriptors) err_handshake (no valid 101) err_other
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
 *   fanout      servers members receivers failed (members that could not
 *               join) rate duration messages (planned) sent send_failed
 *               (did not fit the sender's queue) send_s expected (sent x
 *               receivers in the room) received lost (expected - received)
 *               dup ooo (out of order) dropped (members closed by the server
 *               during the run) unsynced join_s drain_s deliveries_per_s
 *               (received / duration) p50_us p90_us p99_us max_us mean_us
 *               (send to receive)
 * All SUMMARY lines carry ws (the WebSocket path or "-"); with --connect,
 * host is "-" and port is the --connect list.
 * Rates are per second over the measured duration; latencies are in
 * microseconds, taken from a log-linear histogram (< 1% relative error,
 * upper bound of the bucket; max is exact).  label is "-" unless --label.
 *
 * Exit status: 0 ok; 1 errors > 0 or no verified request (rr, churn), or
 * any session failed (hold), or errors, lost messages or members that could
 * not join (fanout); 2 bad usage.
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
#include <sys/random.h>
#include <sys/socket.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <nettle/base64.h>
#include <nettle/sha1.h>

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
#define MAX_DESTS	64
#define HS_MAX		4096	/* bytes of a WebSocket handshake reply */
#define FAN_BUF		16384	/* fanout: longest line or message taken */
#define FAN_OUT		(256 * 1024)	/* fanout: bytes queued to a server */
#define FAN_MSGS_MAX	10000000	/* fanout: messages a run may send */
#define SYNC_EVERY	(250 * MSEC)
#define WS_GUID		"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum mode { MODE_RR, MODE_CHURN, MODE_HOLD, MODE_FANOUT };

enum err_kind {
	E_REFUSED, E_RESET, E_TIMEOUT, E_BADREPLY, E_EOF, E_NOADDR, E_NOFILE,
	E_HANDSHAKE, E_OTHER, E_NKINDS
};
static const char *const err_names[E_NKINDS] = {
	"refused", "reset", "timeout", "badreply", "eof", "noaddr", "nofile",
	"handshake", "other"
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
	const char	*ws;		/* WebSocket path, NULL: lines */
	const char	*origin;	/* NULL: http://HOST:PORT, "": none */
	const char	*room;
	const char	*connect;	/* HOST:PORT,... */
	double		 drain;
	double		 sync_wait;
} opt = {
	.host = "127.0.0.1", .conns = 50, .size = 16, .duration = 10,
	.warmup = 1, .threads = 1, .sessions = 1000, .hold_time = 5,
	.prefix = "Echo: ", .timeout = 5, .label = "-", .room = "fanout",
	.drain = 5, .sync_wait = 30,
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
	C_SENDING,	/* bytes being written; c->next once they are out */
	C_UPGRADE,	/* WebSocket: handshake written, waiting for the 101 */
	C_WAITING,	/* request written, waiting for the reply */
	C_HELD,		/* hold: verified once, idle */
	C_DEAD,		/* hold, fanout: failed, not retried */
	C_RETRY,	/* rr: reconnect at deadline */
	C_JOINING,	/* fanout: commands written, not yet in the room */
	C_MEMBER,	/* fanout: in the room */
};

struct dest {
	struct sockaddr_storage	 addr;
	socklen_t		 len;
	char			 name[300];	/* HOST:PORT, [V6]:PORT */
};

struct conn {
	int		 fd;
	enum cstate	 state;
	enum cstate	 next;		/* the state after C_SENDING */
	uint32_t	 evmask;	/* what is registered with epoll, 0 = not */
	uint32_t	 seq;
	unsigned	 dst;		/* index in dests */
	uint64_t	 t_conn;	/* connect() called */
	uint64_t	 t_req;		/* first byte of the request written */
	uint64_t	 deadline;
	const char	*out;		/* being written: out[out_off .. out_len) */
	size_t		 out_off;
	size_t		 out_len;
	size_t		 in_len;
	char		*in;
	char		*pl;		/* the request's payload, opt.size bytes */
	char		*req;		/* the request as sent; fanout: output queue */
	size_t		 req_len;	/* its length; fanout: the queue's size */
	char		*msg;		/* WebSocket: the handshake, then the message read */
	size_t		 msg_len;
	int		 in_msg;	/* WebSocket: a fragmented message is open */
	char		 accept[32];	/* WebSocket: the Sec-WebSocket-Accept expected */
	/* fanout */
	int		 sender;
	int		 counted;	/* a receiving member in the room */
	int		 synced;	/* has seen a sync message of this run */
	uint8_t		*seen;		/* a bit per message of the run */
	int64_t		 last_seq;
};

struct worker {
	pthread_t	 th;
	unsigned	 idx;
	int		 ep;
	struct conn	*conns;
	unsigned	 nconns;
	unsigned	 inflight;
	uint64_t	 attempts;
	uint64_t	 rng;
	struct hist	 h;
	uint64_t	 requests;	/* verified in the measured window */
	uint64_t	 all;		/* verified, warm-up included */
	uint64_t	 errors[E_NKINDS];
	uint64_t	 missed;
	int		 phase;		/* hold: 1 opening, 2 holding, 3 checking */
	unsigned	 resolved;
	uint64_t	 ok_start, ok_end, dropped;
	uint64_t	 t_opened;
	uint64_t	 dup, ooo;	/* fanout */
};

static struct dest dests[MAX_DESTS];
static unsigned ndests;
static size_t in_cap;		/* longest acceptable reply + 1 */
static size_t msg_cap;		/* WebSocket: longest message taken */
static uint64_t t_start, t_measure, t_end;
static _Atomic uint64_t hold_end;
static pthread_barrier_t barrier;
static atomic_int bad_reply_shown;
static struct worker *workers;

/* fanout */
static char fan_run[8];		/* this run's tag, in every message */
static char fan_nick[24];	/* the sender's nick */
static uint64_t fan_msgs;	/* messages the run sends */
static unsigned fan_members;	/* receiving members */
static _Atomic unsigned fan_ready, fan_failed, fan_synced, fan_lost_unsynced;
static _Atomic uint64_t fan_delivered;
static atomic_int fan_stop, fan_sender_dead;
static struct {
	unsigned	 ready;		/* receiving members when sending started */
	unsigned	 unsynced;
	uint64_t	 sent, send_failed;
	uint64_t	 t_joined, t_synced, t_first, t_last, t_drained;
} fan;

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

static void fill_random(void *buf, size_t len)
{
	if (getrandom(buf, len, 0) != (ssize_t)len)
		die("getrandom: %s", strerror(errno));
}

/* xorshift64*: WebSocket masks, which need no more than being unpredictable
 * to the server (RFC 6455 5.3); keys come from getrandom() */
static uint32_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return (uint32_t)((*s * 0x2545F4914F6CDD1Dull) >> 32);
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
	c->out_off = c->out_len = 0;
	c->msg_len = 0;
	c->in_msg = 0;
}

/* the state a connection is in, or will be in once its output is written */
static enum cstate lstate(const struct conn *c)
{
	return c->state == C_SENDING ? c->next : c->state;
}

static void set_lstate(struct conn *c, enum cstate s)
{
	if (c->state == C_SENDING)
		c->next = s;
	else
		c->state = s;
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

/* ---- WebSocket (RFC 6455), client side ------------------------------------ */

static size_t ws_frame_len(size_t len)
{
	return len + 4 + (len < 126 ? 2 : len < 65536 ? 4 : 10);
}

/* A masked frame with FIN set; dst holds ws_frame_len(len) bytes. */
static size_t ws_frame(char *dst, unsigned opcode, const char *pl, size_t len,
    uint32_t mask)
{
	unsigned char *d = (unsigned char *)dst, m[4];
	size_t h = 0, i;

	d[h++] = (unsigned char)(0x80 | opcode);
	if (len < 126) {
		d[h++] = (unsigned char)(0x80 | len);
	} else if (len < 65536) {
		d[h++] = 0x80 | 126;
		d[h++] = (unsigned char)(len >> 8);
		d[h++] = (unsigned char)len;
	} else {
		d[h++] = 0x80 | 127;
		for (i = 8; i-- > 0;)
			d[h++] = (unsigned char)((uint64_t)len >> (8 * i));
	}
	memcpy(m, &mask, 4);
	memcpy(d + h, m, 4);
	h += 4;
	for (i = 0; i < len; i++)
		d[h + i] = (unsigned char)pl[i] ^ m[i & 3];
	return h + len;
}

/* Write the Upgrade request into c->msg; remember the accept value due. */
static size_t ws_handshake(struct conn *c)
{
	uint8_t raw[16], digest[SHA1_DIGEST_SIZE];
	char key[BASE64_ENCODE_RAW_LENGTH(16) + 1];
	struct sha1_ctx sha;
	const struct dest *d = &dests[c->dst];
	int n;

	fill_random(raw, sizeof(raw));
	base64_encode_raw(key, sizeof(raw), raw);
	key[BASE64_ENCODE_RAW_LENGTH(16)] = '\0';
	sha1_init(&sha);
	sha1_update(&sha, strlen(key), (const uint8_t *)key);
	sha1_update(&sha, sizeof(WS_GUID) - 1, (const uint8_t *)WS_GUID);
	sha1_digest(&sha, sizeof(digest), digest);
	base64_encode_raw(c->accept, sizeof(digest), digest);
	c->accept[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE)] = '\0';
	if (opt.origin == NULL)
		n = snprintf(c->msg, msg_cap, "GET %s HTTP/1.1\r\nHost: %s\r\n"
		    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
		    "Sec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n\r\n",
		    opt.ws, d->name, key, d->name);
	else
		n = snprintf(c->msg, msg_cap, "GET %s HTTP/1.1\r\nHost: %s\r\n"
		    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
		    "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n", opt.ws, d->name, key,
		    *opt.origin ? "Origin: " : "", opt.origin, *opt.origin ? "\r\n" : "");
	if (n < 0 || (size_t)n >= msg_cap)
		die("WebSocket handshake longer than %zu bytes", msg_cap);
	return (size_t)n;
}

/* does the comma-separated list v (n bytes) hold token tok, any case? */
static int has_token(const char *v, size_t n, const char *tok)
{
	size_t tl = strlen(tok), i = 0;

	while (i < n) {
		size_t s, e;

		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		s = i;
		while (i < n && v[i] != ',')
			i++;
		e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
			return 1;
	}
	return 0;
}

/* The server's reply to the Upgrade (len bytes, up to the empty line). */
static int ws_reply_ok(const struct conn *c, const char *h, size_t len)
{
	const char *p = h, *end = h + len;
	int up = 0, conn = 0, acc = 0, first = 1;

	while (p < end) {
		const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2), *colon, *v;
		size_t ll, vl;

		if (eol == NULL)
			return 0;
		ll = (size_t)(eol - p);
		if (first) {
			if (ll < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0 ||
			    (ll > 12 && p[12] != ' '))
				return 0;
			first = 0;
		} else if (ll > 0 && (colon = memchr(p, ':', ll)) != NULL) {
			size_t nl = (size_t)(colon - p);

			v = colon + 1;
			vl = (size_t)(eol - v);
			while (vl > 0 && (*v == ' ' || *v == '\t')) {
				v++;
				vl--;
			}
			while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
				vl--;
			if (nl == 7 && strncasecmp(p, "upgrade", 7) == 0)
				up = vl == 9 && strncasecmp(v, "websocket", 9) == 0;
			else if (nl == 10 && strncasecmp(p, "connection", 10) == 0)
				conn = has_token(v, vl, "upgrade");
			else if (nl == 20 && strncasecmp(p, "sec-websocket-accept", 20) == 0)
				acc = vl == strlen(c->accept) && memcmp(v, c->accept, vl) == 0;
		}
		p = eol + 2;
	}
	return up && conn && acc;
}

/* ---- requests and replies ------------------------------------------------- */

/* Write the request's sequence number into its first bytes, as hex. */
static void stamp_request(struct conn *c)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = opt.size < 8 ? opt.size : 8, i;
	uint32_t v = ++c->seq;

	for (i = 0; i < n; i++) {
		c->pl[n - 1 - i] = hex[v & 15];
		v >>= 4;
	}
}

static void conn_fail(struct worker *w, struct conn *c, enum err_kind kind);
static void conn_done(struct worker *w, struct conn *c, uint64_t now);
static void fan_transport_up(struct worker *w, struct conn *c, uint64_t now);
static int fan_line_input(struct worker *w, struct conn *c);
static void fan_message(struct worker *w, struct conn *c, const char *m, size_t len);

static void conn_flush(struct worker *w, struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off,
		    c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (c->state != C_SENDING) {
				c->next = c->state;
				c->state = C_SENDING;
			}
			set_events(w, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
			return;
		}
		conn_fail(w, c, classify(n < 0 ? errno : EPIPE));
		return;
	}
	c->out_off = c->out_len = 0;
	if (c->state == C_SENDING)
		c->state = c->next;
	set_events(w, c, EPOLLIN | EPOLLRDHUP);
}

/* Write len bytes of buf, then be in state next. */
static void send_out(struct worker *w, struct conn *c, const char *buf, size_t len,
    enum cstate next)
{
	c->out = buf;
	c->out_off = 0;
	c->out_len = len;
	c->state = next;
	conn_flush(w, c);
}

static void conn_request(struct worker *w, struct conn *c, uint64_t now)
{
	stamp_request(c);
	if (opt.ws != NULL)
		c->req_len = ws_frame(c->req, 1, c->pl, opt.size, rng_next(&w->rng));
	c->t_req = now;
	c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
	c->in_len = 0;
	send_out(w, c, c->req, c->req_len, C_WAITING);
}

/* The connection is established: upgrade it, or go on with the mode. */
static void conn_up(struct worker *w, struct conn *c, uint64_t now)
{
	if (opt.ws != NULL) {
		size_t n = ws_handshake(c);

		c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
		send_out(w, c, c->msg, n, C_UPGRADE);
		return;
	}
	if (opt.mode == MODE_FANOUT)
		fan_transport_up(w, c, now);
	else
		conn_request(w, c, now);
}

/* Open a connection; the request goes out once it is established. */
static void conn_start(struct worker *w, struct conn *c, uint64_t now)
{
	const struct dest *d = &dests[c->dst];
	int fd, one = 1;

	c->t_conn = now;
	c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	c->msg_len = 0;
	c->in_msg = 0;
	c->evmask = 0;
	w->attempts++;
	w->inflight++;
	fd = socket(d->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
	if (connect(fd, (const struct sockaddr *)&d->addr, d->len) == 0) {
		conn_up(w, c, now);
		return;
	}
	if (errno != EINPROGRESS) {
		conn_fail(w, c, classify(errno));
		return;
	}
	c->state = C_CONNECTING;
	set_events(w, c, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
}

/*
 * Check a reply of len bytes, eol of which are its line ending, against the
 * request.
 */
static int reply_ok(const struct conn *c, const char *m, size_t len, size_t eol)
{
	if (opt.exact && eol != (opt.ws != NULL ? 0u : opt.crlf ? 2u : 1u))
		return 0;
	len -= eol;
	return len == opt.plen + opt.size &&
	    memcmp(m, opt.prefix, opt.plen) == 0 &&
	    memcmp(m + opt.plen, c->pl, opt.size) == 0;
}

/* line modes: exactly one line in reply to the request, nothing else */
static int line_input(struct worker *w, struct conn *c)
{
	char *nl = memchr(c->in, '\n', c->in_len);
	size_t len, eol = 1;

	if (c->state == C_HELD) {
		/* nothing may arrive while a session is held */
		show_bad_reply(c->in, c->in_len);
		conn_fail(w, c, E_BADREPLY);
		return 0;
	}
	if (nl == NULL)
		return 1;
	len = (size_t)(nl - c->in) + 1;
	if (len > 1 && c->in[len - 2] == '\r')
		eol = 2;
	if (len != c->in_len || c->state != C_WAITING || !reply_ok(c, c->in, len, eol)) {
		show_bad_reply(c->in, c->in_len);
		conn_fail(w, c, E_BADREPLY);
		return 0;
	}
	conn_done(w, c, now_ns());
	return 0;
}

static void ws_pong(struct worker *w, struct conn *c, const char *pl, size_t len)
{
	char f[256];
	size_t n = ws_frame(f, 0xA, pl, len, rng_next(&w->rng));

	if (c->out_off < c->out_len)
		return;		/* a request is going out; the server will ping again */
	(void)send(c->fd, f, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int ws_bad(struct worker *w, struct conn *c, const char *what, size_t len)
{
	show_bad_reply(what, len);
	conn_fail(w, c, E_BADREPLY);
	return 0;
}

/* Frames from the server: unmasked, a message may come in fragments. */
static int ws_input(struct worker *w, struct conn *c)
{
	size_t off = 0;

	for (;;) {
		const unsigned char *p = (const unsigned char *)c->in + off;
		size_t avail = c->in_len - off, hl = 2, i;
		uint64_t len;
		unsigned op, fin;
		const char *pl;

		if (avail < 2)
			break;
		fin = p[0] & 0x80;
		op = p[0] & 0x0f;
		if ((p[0] & 0x70) != 0 || (p[1] & 0x80) != 0)
			return ws_bad(w, c, c->in + off, avail);	/* RSV or mask */
		len = p[1] & 0x7f;
		if (len == 126) {
			if (avail < 4)
				break;
			len = (uint64_t)p[2] << 8 | p[3];
			hl = 4;
		} else if (len == 127) {
			if (avail < 10)
				break;
			for (len = 0, i = 2; i < 10; i++)
				len = len << 8 | p[i];
			hl = 10;
		}
		if (len > msg_cap)
			return ws_bad(w, c, c->in + off, avail);	/* too big */
		if (avail < hl + len)
			break;
		pl = c->in + off + hl;
		off += hl + (size_t)len;
		if (op & 8) {
			if (!fin || len > 125)
				return ws_bad(w, c, pl - hl, hl + (size_t)len);
			if (op == 0x8) {	/* close */
				conn_fail(w, c, E_EOF);
				return 0;
			}
			if (op == 0x9)
				ws_pong(w, c, pl, (size_t)len);
			continue;
		}
		if (op == 0 ? !c->in_msg : (op != 1 && op != 2) || c->in_msg)
			return ws_bad(w, c, pl - hl, hl + (size_t)len);
		if (op != 0) {
			c->in_msg = 1;
			c->msg_len = 0;
		}
		if (c->msg_len + len > msg_cap)
			return ws_bad(w, c, c->msg, c->msg_len);
		memcpy(c->msg + c->msg_len, pl, (size_t)len);
		c->msg_len += (size_t)len;
		if (!fin)
			continue;
		c->in_msg = 0;
		if (opt.mode == MODE_FANOUT) {
			fan_message(w, c, c->msg, c->msg_len);
			if (c->fd < 0)
				return 0;
			continue;
		}
		{
			size_t eol = 0, ml = c->msg_len;

			if (ml > 0 && c->msg[ml - 1] == '\n')
				eol = ml > 1 && c->msg[ml - 2] == '\r' ? 2 : 1;
			if (off != c->in_len || c->state != C_WAITING ||
			    !reply_ok(c, c->msg, ml, eol))
				return ws_bad(w, c, c->msg, ml);
		}
		conn_done(w, c, now_ns());
		return 0;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	return 1;
}

static int upgrade_input(struct worker *w, struct conn *c)
{
	char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	size_t hl;

	if (end == NULL) {
		if (c->in_len < HS_MAX)
			return 1;
		show_bad_reply(c->in, c->in_len);
		conn_fail(w, c, E_HANDSHAKE);
		return 0;
	}
	hl = (size_t)(end - c->in) + 4;
	if (c->state != C_UPGRADE || !ws_reply_ok(c, c->in, hl)) {
		show_bad_reply(c->in, hl);
		conn_fail(w, c, E_HANDSHAKE);
		return 0;
	}
	c->in_len -= hl;
	memmove(c->in, c->in + hl, c->in_len);
	if (opt.mode == MODE_FANOUT) {
		fan_transport_up(w, c, now_ns());
		return c->fd >= 0 ? ws_input(w, c) : 0;
	}
	if (c->in_len > 0)
		return ws_bad(w, c, c->in, c->in_len);
	conn_request(w, c, now_ns());
	return 0;
}

/* Bytes arrived: 1 to read on, 0 when the connection moved on or failed. */
static int conn_input(struct worker *w, struct conn *c)
{
	if (lstate(c) == C_UPGRADE)
		return upgrade_input(w, c);
	if (opt.ws != NULL)
		return ws_input(w, c);
	if (opt.mode == MODE_FANOUT)
		return fan_line_input(w, c);
	return line_input(w, c);
}

static void conn_read(struct worker *w, struct conn *c)
{
	for (;;) {
		size_t cap = lstate(c) == C_UPGRADE ? HS_MAX : in_cap;
		ssize_t n;

		if (c->in_len >= cap) {
			show_bad_reply(c->in, c->in_len);
			conn_fail(w, c, E_BADREPLY);
			return;
		}
		n = read(c->fd, c->in + c->in_len, cap - c->in_len);
		if (n > 0) {
			c->in_len += (size_t)n;
			if (!conn_input(w, c))
				return;
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
	enum cstate st;

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
		conn_up(w, c, now_ns());
		return;
	}
	if (c->state == C_SENDING && (ev & EPOLLOUT)) {
		conn_flush(w, c);
		if (c->fd < 0)
			return;
	}
	st = lstate(c);
	if ((st == C_UPGRADE || st == C_WAITING || st == C_HELD || st == C_JOINING ||
	    st == C_MEMBER) && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
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
	case MODE_FANOUT:
		break;
	}
}

static void conn_fail(struct worker *w, struct conn *c, enum err_kind kind)
{
	enum cstate was = lstate(c);

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
	case MODE_FANOUT:
		c->state = C_DEAD;
		w->errors[kind]++;
		if (c->sender) {
			atomic_store(&fan_sender_dead, 1);
		} else if (was == C_MEMBER) {
			/* what it has not received yet counts as lost */
			w->dropped++;
			if (!c->synced)
				atomic_fetch_add(&fan_lost_unsynced, 1);
		} else {
			atomic_fetch_add(&fan_failed, 1);
			w->inflight--;
		}
		break;
	}
}

/* ---- fanout ----------------------------------------------------------------- */

/* Queue bytes to a fanout connection; -1 when its queue is full. */
static int fan_queue(struct worker *w, struct conn *c, const char *data, size_t len)
{
	if (c->out_off > 0 && c->out_len + len > c->req_len) {
		memmove(c->req, c->req + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_len + len > c->req_len)
		return -1;
	memcpy(c->req + c->out_len, data, len);
	c->out = c->req;
	c->out_len += len;
	if (c->state != C_SENDING)
		conn_flush(w, c);
	return 0;
}

/* Send one chat message: a line, or a WebSocket text {"message": "..."}. */
static int fan_say(struct worker *w, struct conn *c, const char *body)
{
	char buf[FAN_BUF];
	size_t n = strlen(body);

	if (opt.ws == NULL) {
		if (n + 1 > sizeof(buf))
			return -1;
		memcpy(buf, body, n);
		buf[n++] = '\n';
		return fan_queue(w, c, buf, n);
	} else {
		char js[FAN_BUF - 32];
		int jl = snprintf(js, sizeof(js), "{\"message\": \"%s\"}", body);

		if (jl < 0 || (size_t)jl >= sizeof(js))
			return -1;
		n = ws_frame(buf, 1, js, (size_t)jl, rng_next(&w->rng));
		return fan_queue(w, c, buf, n);
	}
}

static void fan_in_room(struct worker *w, struct conn *c)
{
	set_lstate(c, C_MEMBER);
	w->inflight--;
	if (!c->sender) {
		c->counted = 1;
		atomic_fetch_add(&fan_ready, 1);
	}
}

/* TCP (lines) or the 101 (WebSocket) is there: join the room. */
static void fan_transport_up(struct worker *w, struct conn *c, uint64_t now)
{
	char cmd[128];

	c->deadline = now + (uint64_t)(opt.timeout * (double)NSEC);
	c->state = C_JOINING;
	set_events(w, c, EPOLLIN | EPOLLRDHUP);
	if (opt.ws != NULL) {
		/* the WebSocket room takes its members as they connect */
		fan_in_room(w, c);
		return;
	}
	if (c->sender) {
		snprintf(cmd, sizeof(cmd), "/nick %s\n", fan_nick);
		if (fan_queue(w, c, cmd, strlen(cmd)) == -1 || c->fd < 0)
			return;
	}
	snprintf(cmd, sizeof(cmd), "/join %s\n", opt.room);
	(void)fan_queue(w, c, cmd, strlen(cmd));
}

/* A chat message's text: "fb RUN SEQ TS ..." or "fb RUN s 0 ...". */
static void fan_body(struct worker *w, struct conn *c, const char *b, size_t len,
    uint64_t now)
{
	size_t rl = strlen(fan_run);
	char num[48], *e;
	uint64_t seq, ts;
	const char *p, *end = b + len;

	if (len < 3 + rl + 1 || memcmp(b, "fb ", 3) != 0 || memcmp(b + 3, fan_run, rl) != 0 ||
	    b[3 + rl] != ' ')
		return;		/* someone else's words */
	p = b + 3 + rl + 1;
	if (p < end && *p == 's') {
		if (!c->synced && !c->sender) {
			c->synced = 1;
			atomic_fetch_add(&fan_synced, 1);
		}
		return;
	}
	if (c->sender)
		return;		/* its own, from rooms that echo */
	len = (size_t)(end - p) < sizeof(num) - 1 ? (size_t)(end - p) : sizeof(num) - 1;
	memcpy(num, p, len);
	num[len] = '\0';
	seq = strtoull(num, &e, 10);
	if (*e != ' ')
		return;
	ts = strtoull(e + 1, &e, 10);
	if (seq >= fan_msgs || c->seen == NULL)
		return;
	if (c->seen[seq >> 3] & (1u << (seq & 7))) {
		w->dup++;
		return;
	}
	c->seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
	if ((int64_t)seq < c->last_seq)
		w->ooo++;
	else
		c->last_seq = (int64_t)seq;
	atomic_fetch_add_explicit(&fan_delivered, 1, memory_order_relaxed);
	w->requests++;
	hist_add(&w->h, now > ts ? now - ts : 0);
}

static void fan_line(struct worker *w, struct conn *c, const char *l, size_t len)
{
	if (lstate(c) == C_JOINING) {
		size_t rl = strlen(opt.room);

		if (len >= 4 && memcmp(l, "ERR ", 4) == 0) {
			show_bad_reply(l, len);
			conn_fail(w, c, E_BADREPLY);
		} else if ((len == 13 + rl && memcmp(l, "* you joined ", 13) == 0 &&
		    memcmp(l + 13, opt.room, rl) == 0) ||
		    (len == 21 + rl && memcmp(l, "* you are already in ", 21) == 0 &&
		    memcmp(l + 21, opt.room, rl) == 0)) {
			fan_in_room(w, c);
		}
		return;
	}
	if (len > 0 && l[0] == '[') {
		const char *b = memmem(l, len, "] ", 2);

		if (b != NULL)
			fan_body(w, c, b + 2, len - (size_t)(b + 2 - l), now_ns());
	}
}

static int fan_line_input(struct worker *w, struct conn *c)
{
	size_t off = 0;
	char *nl;

	while ((nl = memchr(c->in + off, '\n', c->in_len - off)) != NULL) {
		size_t len = (size_t)(nl - (c->in + off));

		if (len > 0 && c->in[off + len - 1] == '\r')
			len--;
		fan_line(w, c, c->in + off, len);
		if (c->fd < 0)
			return 0;
		off = (size_t)(nl - c->in) + 1;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	return 1;
}

/* A WebSocket message: JSON with a "message" string, or plain text. */
static void fan_message(struct worker *w, struct conn *c, const char *m, size_t len)
{
	char body[FAN_BUF];
	const char *p = memmem(m, len, "\"message\"", 9), *end = m + len;
	size_t o = 0;

	if (lstate(c) != C_MEMBER)
		return;
	if (p == NULL) {
		/* plain text: the text itself, or a chat line "[nick] text" */
		const char *b = len > 0 && m[0] == '[' ? memmem(m, len, "] ", 2) : NULL;

		if (b != NULL) {
			len -= (size_t)(b + 2 - m);
			m = b + 2;
		}
		while (len > 0 && (m[len - 1] == '\n' || m[len - 1] == '\r'))
			len--;
		fan_body(w, c, m, len, now_ns());
		return;
	}
	p += 9;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	if (p >= end || *p++ != ':')
		return;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	if (p >= end || *p++ != '"')
		return;
	/* the text of our messages needs no escapes; others' is skipped over */
	while (p < end && *p != '"' && o < sizeof(body)) {
		if (*p == '\\') {
			if (++p >= end)
				return;
			if (*p == 'u') {
				body[o++] = '?';
				p += p + 5 <= end ? 5 : (size_t)(end - p);
				continue;
			}
		}
		body[o++] = *p++;
	}
	if (p >= end || *p != '"')
		return;
	fan_body(w, c, body, o, now_ns());
}

static void sweep(struct worker *w, uint64_t now)
{
	unsigned i;

	for (i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		switch (lstate(c)) {
		case C_CONNECTING:
		case C_UPGRADE:
		case C_WAITING:
		case C_JOINING:
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

/* fanout, receiving members: open them, then read until the run is over */
static void run_fanout_members(struct worker *w)
{
	uint64_t now = now_ns(), last_sweep = now;
	unsigned next = 0, cap = 256;

	cap = (cap + opt.threads - 1) / opt.threads;
	while (!atomic_load(&fan_stop)) {
		now = now_ns();
		if (now - t_start < HOLD_OPEN_CAP) {
			while (w->inflight < cap && next < w->nconns)
				conn_start(w, &w->conns[next++], now);
		} else if (next < w->nconns) {
			/* out of time to open the rest: they count as failed */
			atomic_fetch_add(&fan_failed, w->nconns - next);
			w->errors[E_TIMEOUT] += w->nconns - next;
			next = w->nconns;
		}
		poll_once(w, 10);
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}
}

/* poll the sender's connection until cond() or the deadline */
static void sender_wait(struct worker *w, int (*cond)(void), uint64_t until)
{
	uint64_t now, last_sweep = now_ns();

	while (!cond() && !atomic_load(&fan_sender_dead) && (now = now_ns()) < until) {
		poll_once(w, ms_until(until, now, 10));
		now = now_ns();
		if (now - last_sweep >= SWEEP_EVERY) {
			sweep(w, now);
			last_sweep = now;
		}
	}
}

static int sender_in_room(void)
{
	return lstate(&workers[opt.threads].conns[0]) == C_MEMBER;
}

static int members_settled(void)
{
	return atomic_load(&fan_ready) + atomic_load(&fan_failed) >= fan_members;
}

static int members_synced(void)
{
	return atomic_load(&fan_synced) + atomic_load(&fan_lost_unsynced) >=
	    atomic_load(&fan_ready);
}

static int all_delivered(void)
{
	return atomic_load(&fan_delivered) >= fan.sent * fan.ready;
}

/* fanout, the sender: in the room, wait for the members, sync, send, drain */
static void run_fanout_sender(struct worker *w)
{
	struct conn *c = &w->conns[0];
	uint64_t now = now_ns(), interval, due, sync_end;
	char body[FAN_BUF / 2];
	size_t pad;
	int n;

	w->inflight = 0;
	conn_start(w, c, now);
	sender_wait(w, sender_in_room, now + (uint64_t)(opt.timeout * (double)NSEC));
	if (!sender_in_room()) {
		if (!atomic_load(&fan_sender_dead))
			w->errors[E_TIMEOUT]++;
		fprintf(stderr, "forkd-bench: the sender could not join %s on %s\n",
		    opt.room, dests[c->dst].name);
		goto out;
	}
	sender_wait(w, members_settled, t_start + HOLD_OPEN_CAP);
	fan.t_joined = now_ns();
	printf("joined: %u of %u members in %.2f s\n", atomic_load(&fan_ready),
	    fan_members, (double)(fan.t_joined - t_start) / NSEC);

	/* a member that has seen a sync message will see every later one */
	sync_end = now_ns() + (uint64_t)(opt.sync_wait * (double)NSEC);
	while (!members_synced() && !atomic_load(&fan_sender_dead) &&
	    (now = now_ns()) < sync_end) {
		snprintf(body, sizeof(body), "fb %s s 0", fan_run);
		if (fan_say(w, c, body) == -1)
			break;
		sender_wait(w, members_synced, now + SYNC_EVERY);
	}
	fan.t_synced = now_ns();
	fan.ready = atomic_load(&fan_ready);
	fan.unsynced = fan.ready - atomic_load(&fan_synced);
	if (fan.unsynced > 0)
		fprintf(stderr, "forkd-bench: %u member(s) never saw a sync message in %.2f s\n",
		    fan.unsynced, opt.sync_wait);

	interval = (uint64_t)((double)NSEC / opt.rate);
	fan.t_first = due = now_ns();
	while (fan.sent + fan.send_failed < fan_msgs && !atomic_load(&fan_sender_dead)) {
		now = now_ns();
		while (due <= now && fan.sent + fan.send_failed < fan_msgs) {
			uint64_t seq = fan.sent + fan.send_failed;

			n = snprintf(body, sizeof(body), "fb %s %" PRIu64 " %" PRIu64,
			    fan_run, seq, now_ns());
			for (pad = (size_t)n; pad < opt.size && pad < sizeof(body) - 1; pad++)
				body[pad] = '.';
			body[pad] = '\0';
			if (fan_say(w, c, body) == 0)
				fan.sent++;
			else
				fan.send_failed++;
			if (c->fd < 0)
				break;
			due += interval;
		}
		if (c->fd < 0)
			break;
		poll_once(w, ms_until(due, now_ns(), 10));
	}
	fan.t_last = now_ns();
	sender_wait(w, all_delivered, fan.t_last + (uint64_t)(opt.drain * (double)NSEC));
	fan.t_drained = now_ns();
out:
	atomic_store(&fan_stop, 1);
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
	case MODE_FANOUT:
		if (w->idx == opt.threads)
			run_fanout_sender(w);
		else
			run_fanout_members(w);
		break;
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

static void add_dest(const char *host, const char *port)
{
	struct addrinfo hints, *res;
	struct dest *d;
	int rc;

	if (ndests == MAX_DESTS) {
		fprintf(stderr, "forkd-bench: at most %d servers\n", MAX_DESTS);
		exit(2);
	}
	d = &dests[ndests++];
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || res == NULL) {
		fprintf(stderr, "forkd-bench: cannot resolve %s port %s: %s\n",
		    host, port, gai_strerror(rc));
		exit(2);
	}
	memcpy(&d->addr, res->ai_addr, res->ai_addrlen);
	d->len = res->ai_addrlen;
	freeaddrinfo(res);
	snprintf(d->name, sizeof(d->name), strchr(host, ':') != NULL ? "[%s]:%s" : "%s:%s",
	    host, port);
	if (opt.sources > 0 && d->addr.ss_family != AF_INET) {
		fprintf(stderr, "forkd-bench: --sources needs an IPv4 --host\n");
		exit(2);
	}
}

static void check_port(const char *p)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(p, &end, 10);
	if (*p < '0' || *p > '9' || errno != 0 || *end != '\0' || v < 1 || v > 65535) {
		fprintf(stderr, "forkd-bench: '%s' is not a port from 1 to 65535\n"
		    "(forkd-bench --help for usage)\n", p);
		exit(2);
	}
}

/* --port P[,P...] on --host, or --connect HOST:PORT[,HOST:PORT...] */
static void resolve(void)
{
	char *list = strdup(opt.connect != NULL ? opt.connect : opt.port), *item, *save;

	if (list == NULL)
		die("out of memory");
	for (item = strtok_r(list, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
		char *host = (char *)opt.host, *port = item, *colon;

		if (opt.connect != NULL) {
			colon = strrchr(item, ':');
			if (colon == NULL || colon == item) {
				fprintf(stderr, "forkd-bench: --connect: '%s' is not HOST:PORT\n",
				    item);
				exit(2);
			}
			*colon = '\0';
			host = item;
			port = colon + 1;
			if (host[0] == '[' && colon[-1] == ']') {
				colon[-1] = '\0';
				host++;
			}
		}
		check_port(port);
		add_dest(host, port);
	}
	free(list);
	if (ndests == 0) {
		fprintf(stderr, "forkd-bench: no server given\n");
		exit(2);
	}
}

static void usage(FILE *f)
{
	fputs(
"usage: forkd-bench MODE --port PORT[,PORT...] [options]\n"
"       forkd-bench MODE --connect HOST:PORT[,HOST:PORT...] [options]\n"
"modes:\n"
"  rr       round trips: N connections, one request in flight each\n"
"  churn    connect, one request, verify, close; repeatedly\n"
"  hold     open K sessions, verify, hold them, verify again\n"
"  fanout   chat: N members in a room, one sends R messages/s, every\n"
"           other member must receive each one\n"
"options:\n"
"  -H, --host ADDR        server address (default 127.0.0.1)\n"
"  -p, --port PORT[,..]   server port(s); connections go round the list\n"
"      --connect LIST     servers as HOST:PORT,HOST:PORT,... instead\n"
"  -c, --connections N    rr: connections (50); churn: concurrent (50);\n"
"                         hold: sessions opened at a time (512);\n"
"                         fanout: members, the sender included (50)\n"
"  -P, --size BYTES       payload bytes per request line (16); fanout:\n"
"                         messages are padded to this length\n"
"  -d, --duration SEC     measured time, rr and churn; fanout: sending (10)\n"
"  -w, --warmup SEC       warm-up before measuring, rr and churn (1)\n"
"  -t, --threads N        client threads (1); fanout: for the receivers,\n"
"                         the sender has its own\n"
"  -k, --sessions K       hold: sessions (1000)\n"
"      --hold-time SEC    hold: how long to keep them open (5)\n"
"  -r, --rate N           churn: target connections per second (as fast as\n"
"                         possible); fanout: messages per second (10)\n"
"  -s, --sources K        bind client sockets to 127.0.0.1..127.0.0.K in turn\n"
"  -x, --prefix TEXT      expected reply prefix (\"Echo: \"; \"\" = plain echo)\n"
"      --lf | --crlf      line ending sent (--lf)\n"
"      --exact            the reply must end with the line ending sent\n"
"                         (WebSocket: with none)\n"
"      --timeout SEC      connect and reply timeout (5)\n"
"      --ws PATH          speak WebSocket (RFC 6455) to PATH: one request, one\n"
"                         text message; one reply, one text message\n"
"      --origin URL       Origin of the WebSocket handshake (http://HOST:PORT;\n"
"                         \"\" = none)\n"
"      --room NAME        fanout, lines: the room joined (fanout)\n"
"      --drain SEC        fanout: longest wait for deliveries after the last\n"
"                         message is sent (5)\n"
"      --sync-wait SEC    fanout: longest wait for every member to see the\n"
"                         sender before it starts (30)\n"
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

enum { O_HOLD = 256, O_LF, O_CRLF, O_EXACT, O_TIMEOUT, O_WS, O_ORIGIN, O_ROOM,
	O_DRAIN, O_CONNECT, O_SYNCWAIT };

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
		{ "ws", required_argument, NULL, O_WS },
		{ "origin", required_argument, NULL, O_ORIGIN },
		{ "room", required_argument, NULL, O_ROOM },
		{ "drain", required_argument, NULL, O_DRAIN },
		{ "connect", required_argument, NULL, O_CONNECT },
		{ "sync-wait", required_argument, NULL, O_SYNCWAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	const char *m;
	size_t i;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":H:p:c:P:d:w:t:k:r:s:x:l:h",
	    longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': opt.host = optarg; break;
		case 'p':
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
		case O_WS:
			if (optarg[0] != '/' || strlen(optarg) > 1024)
				bad("--ws: a path starting with '/', up to 1024 bytes");
			for (i = 0; optarg[i] != '\0'; i++)
				if ((unsigned char)optarg[i] <= ' ' || optarg[i] == 0x7f)
					bad("--ws: no spaces or control bytes in the path");
			opt.ws = optarg;
			break;
		case O_ORIGIN:
			if (strlen(optarg) > 1024 || strpbrk(optarg, "\r\n") != NULL)
				bad("--origin: one line of up to 1024 bytes");
			opt.origin = optarg;
			break;
		case O_ROOM:
			if (*optarg == '\0' || strlen(optarg) > 32 ||
			    strspn(optarg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "0123456789_-.") != strlen(optarg))
				bad("--room: 1-32 letters, digits, '_', '-' or '.'");
			opt.room = optarg;
			break;
		case O_DRAIN: opt.drain = parse_sec("--drain", optarg, 0, 3600); break;
		case O_CONNECT: opt.connect = optarg; break;
		case O_SYNCWAIT: opt.sync_wait = parse_sec("--sync-wait", optarg, 0, 3600); break;
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
		bad("no mode given (rr, churn, hold or fanout)");
	m = argv[optind++];
	if (strcmp(m, "rr") == 0)
		opt.mode = MODE_RR;
	else if (strcmp(m, "churn") == 0)
		opt.mode = MODE_CHURN;
	else if (strcmp(m, "hold") == 0)
		opt.mode = MODE_HOLD;
	else if (strcmp(m, "fanout") == 0)
		opt.mode = MODE_FANOUT;
	else
		bad("unknown mode '%s' (rr, churn, hold or fanout)", m);
	if (optind < argc)
		bad("unexpected argument '%s'", argv[optind]);
	if (opt.port == NULL && opt.connect == NULL)
		bad("--port or --connect is required");
	if (opt.port != NULL && opt.connect != NULL)
		bad("--port and --connect exclude each other");
	if (opt.mode == MODE_FANOUT) {
		if (opt.conns < 2)
			bad("fanout: at least 2 members (-c), one sends");
		if (opt.rate == 0)
			opt.rate = 10;
		if (opt.rate * opt.duration > FAN_MSGS_MAX)
			bad("fanout: --rate x --duration is more than %d messages", FAN_MSGS_MAX);
		if ((opt.rate * opt.duration / 8 + 1) * opt.conns > 1e9)
			bad("fanout: --rate x --duration x members is too much to track");
		if (opt.size > FAN_BUF / 4)
			bad("fanout: --size at most %d", FAN_BUF / 4);
	}
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
	uint64_t ok_start = 0, ok_end = 0, dropped = 0, t_open = 0, dup = 0, ooo = 0;
	const char *shost, *sport;
	unsigned long need;
	unsigned units, nworkers, gidx, i, j;
	size_t k, o;
	char where[MAX_DESTS * 64];
	int rc = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	parse_args(argc, argv);
	resolve();

	units = opt.mode == MODE_HOLD ? opt.sessions :
	    opt.mode == MODE_FANOUT ? opt.conns - 1 : opt.conns;
	if (opt.threads > units)
		opt.threads = units;
	need = (unsigned long)units + 32 + 2 * opt.threads;
	raise_nofile(need);

	where[0] = '\0';
	for (i = 0, o = 0; i < ndests; i++) {
		snprintf(where + o, sizeof(where) - o, "%s%s", i ? "," : "", dests[i].name);
		o += strlen(where + o);
	}
	if (opt.ws != NULL) {
		size_t hs = strlen(opt.ws) + 2 * sizeof(dests[0].name) + 256;

		if (opt.origin != NULL)
			hs += strlen(opt.origin);
		in_cap = HS_MAX;
		msg_cap = opt.plen + opt.size + 2 + 512;
		if (msg_cap < hs)
			msg_cap = hs;	/* the handshake is written there first */
	} else {
		in_cap = opt.plen + opt.size + 2 + 1;
	}
	if (opt.mode == MODE_FANOUT) {
		uint8_t r[6];

		in_cap = FAN_BUF;
		msg_cap = FAN_BUF;
		fan_members = units;
		fan_msgs = (uint64_t)llround(opt.rate * opt.duration);
		fill_random(r, sizeof(r));
		for (k = 0; k < sizeof(r); k++)
			fan_run[k] = "abcdefghijklmnopqrstuvwxyz0123456789"[r[k] % 36];
		snprintf(fan_nick, sizeof(fan_nick), "fbs%s", fan_run);
	}

	/* fanout: one more worker, the sender's, with one connection */
	nworkers = opt.threads + (opt.mode == MODE_FANOUT);
	workers = xcalloc(nworkers, sizeof(*workers));
	for (i = 0, gidx = 1; i < nworkers; i++) {
		struct worker *w = &workers[i];
		int sender = opt.mode == MODE_FANOUT && i == opt.threads;

		w->idx = i;
		fill_random(&w->rng, sizeof(w->rng));
		w->rng |= 1;
		w->nconns = sender ? 1 : units / opt.threads + (i < units % opt.threads);
		w->conns = xcalloc(w->nconns, sizeof(*w->conns));
		w->ep = epoll_create1(EPOLL_CLOEXEC);
		if (w->ep == -1)
			die("epoll_create1: %s", strerror(errno));
		for (j = 0; j < w->nconns; j++) {
			struct conn *c = &w->conns[j];

			c->fd = -1;
			c->in = xcalloc(1, in_cap + 1);
			if (opt.ws != NULL)
				c->msg = xcalloc(1, msg_cap + 1);
			c->seq = (uint32_t)((i * 1000003u + j) * 7919u);
			if (opt.mode == MODE_FANOUT) {
				c->sender = sender;
				c->dst = sender ? 0 : gidx++ % ndests;
				c->req_len = sender ? FAN_OUT : 4096;
				c->req = xcalloc(1, c->req_len);
				c->last_seq = -1;
				if (!sender)
					c->seen = xcalloc(1, (size_t)(fan_msgs / 8 + 1));
				continue;
			}
			c->dst = gidx++ % ndests;
			c->pl = xcalloc(1, opt.size + 2);
			for (k = 0; k < opt.size; k++)
				c->pl[k] = "abcdefghijklmnopqrstuvwxyz0123456789"[(k + j) % 36];
			if (opt.ws != NULL) {
				c->req = xcalloc(1, ws_frame_len(opt.size));
			} else {
				/* the payload is the start of the line sent */
				c->req_len = opt.size + (opt.crlf ? 2 : 1);
				c->req = c->pl;
				memcpy(c->req + opt.size, opt.crlf ? "\r\n" : "\n",
				    opt.crlf ? 2 : 1);
			}
		}
	}

	switch (opt.mode) {
	case MODE_RR:
		printf("rr: %s%s%s, %u connections, %zu-byte payload, %u thread(s), "
		    "%.2f s warm-up + %.2f s\n", where, opt.ws ? " WebSocket " : "",
		    opt.ws ? opt.ws : "", opt.conns,
		    opt.size, opt.threads, opt.warmup, opt.duration);
		break;
	case MODE_CHURN:
		if (opt.rate > 0)
			printf("churn: %s, target %.0f connections/s, at most %u "
			    "in flight, ", where, opt.rate, opt.conns);
		else
			printf("churn: %s, %u concurrent, as fast as possible, ",
			    where, opt.conns);
		printf("%zu-byte payload, %u thread(s), %u source address(es), "
		    "%.2f s warm-up + %.2f s\n", opt.size, opt.threads,
		    opt.sources ? opt.sources : 1, opt.warmup, opt.duration);
		break;
	case MODE_HOLD:
		printf("hold: %s%s%s, %u sessions, %zu-byte payload, %u thread(s), "
		    "hold %.2f s\n", where, opt.ws ? " WebSocket " : "",
		    opt.ws ? opt.ws : "", opt.sessions, opt.size,
		    opt.threads, opt.hold_time);
		break;
	case MODE_FANOUT:
		printf("fanout: %s%s%s, %u members (%u receive), %s%s%s%.0f messages/s for "
		    "%.2f s (%" PRIu64 "), %zu-byte messages, %u thread(s) + the sender's\n",
		    where, opt.ws ? " WebSocket " : "", opt.ws ? opt.ws : "", opt.conns,
		    fan_members, opt.ws ? "" : "room ", opt.ws ? "" : opt.room,
		    opt.ws ? "" : ", ",
		    opt.rate, opt.duration, fan_msgs, opt.size, opt.threads);
		break;
	}

	if (pthread_barrier_init(&barrier, NULL, opt.threads) != 0)
		die("pthread_barrier_init failed");
	t_start = now_ns();
	t_measure = t_start + (uint64_t)(opt.warmup * (double)NSEC);
	t_end = t_measure + (uint64_t)(opt.duration * (double)NSEC);
	for (i = 0; i < nworkers; i++) {
		int err = pthread_create(&workers[i].th, NULL, worker_main, &workers[i]);

		if (err != 0)
			die("pthread_create: %s", strerror(err));
	}
	h = xcalloc(1, sizeof(*h));
	for (i = 0; i < nworkers; i++) {
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
		dup += w->dup;
		ooo += w->ooo;
		if (w->t_opened > t_open)
			t_open = w->t_opened;
	}

	shost = opt.connect != NULL ? "-" : opt.host;
	sport = opt.connect != NULL ? opt.connect : opt.port;
	if (opt.mode == MODE_FANOUT) {
		uint64_t expected = fan.sent * fan.ready;
		uint64_t lost = expected > requests ? expected - requests : 0;
		double span = fan.t_last > fan.t_first ? (double)(fan.t_last - fan.t_first) / NSEC : 0;
		double dps = (double)requests / opt.duration;
		unsigned long long p50 = us_round(hist_pct(h, 50));
		unsigned long long p90 = us_round(hist_pct(h, 90));
		unsigned long long p99 = us_round(hist_pct(h, 99));
		unsigned long long pmax = us_round(h->max);
		unsigned long long mean = h->count ? us_round(h->sum / h->count) : 0;
		unsigned failed = atomic_load(&fan_failed);

		printf("sent %" PRIu64 " of %" PRIu64 " messages in %.2f s (%.1f/s)%s\n",
		    fan.sent, fan_msgs, span, span > 0 ? (double)(fan.sent - 1) / span : 0.0,
		    fan.send_failed ? " (the rest did not fit the sender's queue)" : "");
		printf("deliveries: %" PRIu64 " of %" PRIu64 " (%u members x %" PRIu64
		    "), lost %" PRIu64 ", duplicates %" PRIu64 ", out of order %" PRIu64
		    "; %.1f deliveries/s\n", requests, expected, fan.ready, fan.sent, lost,
		    dup, ooo, dps);
		printf("members: %u in the room, %u failed to join, %" PRIu64
		    " closed by the server during the run, %u never synced\n",
		    fan.ready, failed, dropped, fan.unsynced);
		printf("latency (send to receive), us: p50 %llu, p90 %llu, p99 %llu, max %llu, "
		    "mean %llu\n", p50, p90, p99, pmax, mean);
		print_errors(errs, nerr);
		printf("SUMMARY mode=fanout label=%s host=%s port=%s ws=%s servers=%u threads=%u "
		    "size=%zu members=%u receivers=%u failed=%u rate=%.1f duration=%.2f "
		    "messages=%" PRIu64 " sent=%" PRIu64 " send_failed=%" PRIu64
		    " send_s=%.2f expected=%" PRIu64 " received=%" PRIu64 " lost=%" PRIu64
		    " dup=%" PRIu64 " ooo=%" PRIu64 " dropped=%" PRIu64 " unsynced=%u"
		    " join_s=%.2f drain_s=%.2f", opt.label, shost, sport,
		    opt.ws ? opt.ws : "-", ndests, opt.threads, opt.size, opt.conns,
		    fan_members, failed, opt.rate, opt.duration, fan_msgs, fan.sent,
		    fan.send_failed, span, expected, requests, lost, dup, ooo, dropped,
		    fan.unsynced,
		    fan.t_joined > t_start ? (double)(fan.t_joined - t_start) / NSEC : 0.0,
		    fan.t_drained > fan.t_last ? (double)(fan.t_drained - fan.t_last) / NSEC : 0.0);
		summary_errors(errs, nerr);
		printf(" deliveries_per_s=%.1f p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu"
		    " mean_us=%llu\n", dps, p50, p90, p99, pmax, mean);
		rc = (nerr > 0 || lost > 0 || failed > 0 || fan.sent == 0 ||
		    fan.ready < fan_members) ? 1 : 0;
	} else if (opt.mode == MODE_HOLD) {
		printf("answered at start: %" PRIu64 " of %u; after %.2f s held: %" PRIu64
		    " (%" PRIu64 " closed by the server meanwhile)\n", ok_start,
		    opt.sessions, opt.hold_time, ok_end, dropped);
		print_errors(errs, nerr);
		printf("SUMMARY mode=hold label=%s host=%s port=%s ws=%s threads=%u size=%zu "
		    "sessions=%u hold_time=%.2f ok_start=%" PRIu64 " ok_end=%" PRIu64
		    " dropped=%" PRIu64 " open_s=%.2f", opt.label, shost, sport,
		    opt.ws ? opt.ws : "-", opt.threads, opt.size, opt.sessions, opt.hold_time, ok_start, ok_end,
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
			printf("SUMMARY mode=rr label=%s host=%s port=%s ws=%s threads=%u size=%zu "
			    "conns=%u warmup=%.2f duration=%.2f requests=%" PRIu64,
			    opt.label, shost, sport, opt.ws ? opt.ws : "-", opt.threads, opt.size,
			    opt.conns, opt.warmup, opt.duration, requests);
		else
			printf("SUMMARY mode=churn label=%s host=%s port=%s ws=%s threads=%u size=%zu "
			    "conns=%u target_rate=%.0f sources=%u warmup=%.2f duration=%.2f "
			    "requests=%" PRIu64 " missed=%" PRIu64, opt.label, shost,
			    sport, opt.ws ? opt.ws : "-", opt.threads, opt.size, opt.conns, opt.rate,
			    opt.sources, opt.warmup, opt.duration, requests, missed);
		printf(" all_requests=%" PRIu64, all);
		summary_errors(errs, nerr);
		printf(" rate=%.1f p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu mean_us=%llu\n",
		    rate, p50, p90, p99, pmax, mean);
		rc = (nerr > 0 || requests == 0) ? 1 : 0;
	}
	free(h);
	return rc;
}
