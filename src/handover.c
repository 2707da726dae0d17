/*
 * Handover of open sessions between workers (see handover.h for the
 * picture).  The worker side runs on the worker's main thread; the master
 * side in the master's loop.  Nothing here blocks for long: the master's
 * sockets are non-blocking, a worker offers at most HO_WINDOW sessions
 * before it hears back, and whatever cannot go now is offered again on a
 * later tick.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "handover.h"
#include "log.h"
#include "scoreboard.h"
#include "util.h"
#include "worker.h"

#define HO_WINDOW	64	/* sessions a worker has on offer at once */
#define HO_SOCKBUF	(4 * 1024 * 1024)
#define HO_REPLY_MS	1000	/* longest wait to send an answer */

/* ---- state buffers ---- */

void
hob_put(struct hobuf *b, const void *p, size_t n)
{
	if (b->err || n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 512;
		char *nb;

		while (cap < b->len + n)
			cap *= 2;
		if ((nb = realloc(b->p, cap)) == NULL) {
			b->err = true;
			return;
		}
		b->p = nb;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

void
hob_u32(struct hobuf *b, uint32_t v)
{
	hob_put(b, &v, sizeof(v));
}

void
hob_u64(struct hobuf *b, uint64_t v)
{
	hob_put(b, &v, sizeof(v));
}

void
hob_bytes(struct hobuf *b, const void *p, size_t n)
{
	if (n > UINT32_MAX) {
		b->err = true;
		return;
	}
	hob_u32(b, (uint32_t)n);
	hob_put(b, p, n);
}

static const char *
hor_take(struct horead *r, size_t n)
{
	const char *p;

	if (r->err || n > r->len - r->off) {
		r->err = true;
		return NULL;
	}
	p = r->p + r->off;
	r->off += n;
	return p;
}

uint32_t
hor_u32(struct horead *r)
{
	const char *p = hor_take(r, sizeof(uint32_t));
	uint32_t v = 0;

	if (p != NULL)
		memcpy(&v, p, sizeof(v));
	return v;
}

uint64_t
hor_u64(struct horead *r)
{
	const char *p = hor_take(r, sizeof(uint64_t));
	uint64_t v = 0;

	if (p != NULL)
		memcpy(&v, p, sizeof(v));
	return v;
}

const char *
hor_bytes(struct horead *r, size_t *n, size_t max)
{
	uint32_t len = hor_u32(r);
	const char *p;

	*n = 0;
	if (r->err || len > max) {
		r->err = true;
		return NULL;
	}
	p = hor_take(r, len);
	if (p != NULL)
		*n = len;
	return p != NULL ? p : "";
}

/* ---- records ---- */

union ho_cmsg {
	struct cmsghdr	hdr;
	char		buf[CMSG_SPACE(2 * sizeof(int))];
};

/* One record with up to two descriptors; -1 and errno on failure. */
static int
send_record(int fd, const struct ho_hdr *h, const void *state, size_t len,
    const int *fds, int nfds)
{
	struct iovec iov[2];
	struct msghdr msg;
	union ho_cmsg cm;
	ssize_t n;

	memset(&msg, 0, sizeof(msg));
	iov[0].iov_base = (void *)(uintptr_t)h;
	iov[0].iov_len = sizeof(*h);
	iov[1].iov_base = (void *)(uintptr_t)state;
	iov[1].iov_len = len;
	msg.msg_iov = iov;
	msg.msg_iovlen = len > 0 ? 2 : 1;
	if (nfds > 0) {
		struct cmsghdr *c;

		memset(&cm, 0, sizeof(cm));
		msg.msg_control = cm.buf;
		msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
	}
	do
		n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -1 : 0;
}

/* An answer must arrive: wait a little for room in the socket. */
static int
send_answer(int fd, const struct ho_hdr *h)
{
	uint64_t end = now_ms() + HO_REPLY_MS;

	for (;;) {
		struct pollfd p = { fd, POLLOUT, 0 };
		uint64_t now;

		if (send_record(fd, h, NULL, 0, NULL, 0) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		now = now_ms();
		if (now >= end)
			return -1;
		poll(&p, 1, (int)(end - now));
	}
}

/*
 * One record: its header, inline state in buf, descriptors in fds[] (-1
 * where none).  0 none left, 1 one read, -1 the peer is gone.
 */
static int
recv_record(int fd, struct ho_hdr *h, char *buf, size_t cap, size_t *len, int fds[2])
{
	struct iovec iov[2];
	struct msghdr msg;
	union ho_cmsg cm;
	struct cmsghdr *c;
	ssize_t n;

	fds[0] = fds[1] = -1;
	memset(&msg, 0, sizeof(msg));
	memset(h, 0, sizeof(*h));
	iov[0].iov_base = h;
	iov[0].iov_len = sizeof(*h);
	iov[1].iov_base = buf;
	iov[1].iov_len = cap;
	msg.msg_iov = iov;
	msg.msg_iovlen = 2;
	msg.msg_control = cm.buf;
	msg.msg_controllen = sizeof(cm.buf);
	do
		n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
	if (n == 0)
		return -1;
	for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			size_t k, nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (k = 0; k < nfd; k++) {
				int got;

				memcpy(&got, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
				if (k < 2 && fds[k] < 0)
					fds[k] = got;
				else
					close(got);
			}
		}
	}
	if ((size_t)n < sizeof(*h) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		h->magic = 0;	/* unreadable: refused */
		*len = 0;
	} else {
		*len = (size_t)n - sizeof(*h);
	}
	return 1;
}

static void
close_fds(int fds[2])
{
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	fds[0] = fds[1] = -1;
}

/* ---- worker side ---- */

static struct {
	int		 fd;
	bool		 active;	/* retired: every session goes */
	bool		 paused;	/* the socket is full: wait for answers */
	int		 cursor;	/* next fd to look at in this round */
	uint64_t	 seq;
	struct {
		uint64_t	 id;
		struct session	*c;
	}		 fly[HO_WINDOW];
	int		 nfly;
	/* adopted here, waiting for the old worker's tail */
	struct parked {
		uint64_t	 id;
		struct session	*c;
		struct parked	*next;
	}		*parked;
} H = { .fd = -1 };

void
ho_worker_init(struct worker *w, int fd)
{
	(void)w;
	H.fd = fd;
}

/* A record with state bytes: inline, or in a memfd when large. */
static int
send_state(int sock, struct ho_hdr *h, int fd, const char *state, size_t len)
{
	int fds[2] = { fd, -1 }, nfds = fd >= 0 ? 1 : 0, rc;

	h->len = (uint32_t)len;
	h->memfd = 0;
	if (len > HO_INLINE_MAX) {
		/* a long output queue: in a file of its own, not in the socket */
		if ((fds[nfds] = memfd_create("forkd-session", MFD_CLOEXEC)) < 0)
			return -1;
		if (write_full(fds[nfds], state, len) != 0) {
			close(fds[nfds]);
			return -1;
		}
		h->memfd = 1;
		nfds++;
	}
	rc = send_record(sock, h, h->memfd ? NULL : state, h->memfd ? 0 : len, fds, nfds);
	if (h->memfd)
		close(fds[nfds - 1]);
	return rc;
}

/* The same for a record that must go: wait a little for room. */
static int
send_state_wait(int sock, struct ho_hdr *h, const char *state, size_t len)
{
	uint64_t end = now_ms() + HO_REPLY_MS;

	for (;;) {
		struct pollfd p = { sock, POLLOUT, 0 };
		uint64_t now;

		if (send_state(sock, h, -1, state, len) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		now = now_ms();
		if (now >= end)
			return -1;
		poll(&p, 1, (int)(end - now));
	}
}

/* The state bytes of a record: inline, or read from its memfd (malloc'd
 * into *own). NULL when unreadable. */
static const char *
record_state(const struct ho_hdr *h, const char *inl, size_t len, int memfd, char **own)
{
	*own = NULL;
	if (!h->memfd)
		return len == h->len ? inl : NULL;
	if (memfd < 0 || (*own = malloc(h->len ? h->len : 1)) == NULL)
		return NULL;
	if (pread(memfd, *own, h->len, 0) != (ssize_t)h->len) {
		free(*own);
		*own = NULL;
		return NULL;
	}
	return *own;
}

/* Offer one session: 0 sent, -1 it stays (and why in errno). */
static int
offer(struct worker *w, struct session *c)
{
	struct hobuf b = { NULL, 0, 0, false };
	struct ho_hdr h;
	int rc;

	memset(&h, 0, sizeof(h));
	h.magic = HO_MAGIC;
	h.version = HO_VERSION;
	h.type = HO_OFFER;
	h.id = ((uint64_t)w->slot << 48) | ++H.seq;
	h.from = w->slot;
	if (conn_save(c, &b) != 0) {
		/* mid-message, say: another round will take it */
		errno = b.err ? ENOMEM : EBUSY;
		free(b.p);
		return -1;
	}
	rc = send_state(H.fd, &h, c->fd, b.p, b.len);
	if (rc == 0 && h.memfd)
		log_debug("%s: %zu bytes of state, in a memfd", c->peer, b.len);
	free(b.p);
	if (rc != 0)
		return -1;
	H.fly[H.nfly].id = h.id;
	H.fly[H.nfly].c = c;
	H.nfly++;
	return 0;
}

static void
stays(struct session *c)
{
	char *tail;
	size_t tlen;

	conn_handed(c, false, 0, &tail, &tlen);
	free(tail);
}

/* Offer what can go now, up to the window. */
static void
pump(struct worker *w)
{
	while (H.active && !H.paused && H.nfly < HO_WINDOW &&
	    H.cursor <= atomic_load(&w->maxfd)) {
		struct session *c = conn_take(w, H.cursor++);

		if (c == NULL)
			continue;
		if (offer(w, c) != 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
				H.paused = true;	/* answers make room */
				H.cursor--;
			} else if (errno != EBUSY) {
				log_warn("%s: cannot offer the session", c->peer);
			}
			stays(c);
		}
	}
}

void
ho_worker_start(struct worker *w)
{
	if (H.fd < 0 || H.active)
		return;
	H.active = true;
	H.cursor = 0;
	log_debug("handing over %ld session%s", atomic_load(&w->nconns),
	    PLURAL(atomic_load(&w->nconns)));
	pump(w);
}

void
ho_worker_tick(struct worker *w)
{
	if (!H.active)
		return;
	/* a new round for those that were busy, or came back */
	if (H.cursor > atomic_load(&w->maxfd) && H.nfly == 0)
		H.cursor = 0;
	H.paused = false;
	pump(w);
}

void
ho_worker_abort(struct worker *w)
{
	(void)w;
	H.active = false;
	while (H.nfly > 0)
		stays(H.fly[--H.nfly].c);
	/* no tail can come any more */
	while (H.parked != NULL) {
		struct parked *p = H.parked;

		H.parked = p->next;
		conn_tail(p->c, NULL, 0);
		conn_adopted(p->c);
		free(p);
	}
}

/* Tell the new worker what we still owed the session it adopted. */
static void
send_tail(struct worker *w, uint64_t id, const char *tail, size_t tlen)
{
	struct ho_hdr t;

	memset(&t, 0, sizeof(t));
	t.magic = HO_MAGIC;
	t.version = HO_VERSION;
	t.type = HO_TAIL;
	t.id = id;
	t.from = w->slot;
	if (send_state_wait(H.fd, &t, tail, tlen) != 0)
		log_warn("cannot send a session's last lines on");
}

/* The master's answer about one of ours. */
static void
settle(struct worker *w, const struct ho_hdr *h)
{
	struct session *c;
	char *tail;
	size_t tlen;
	int i;

	for (i = 0; i < H.nfly; i++)
		if (H.fly[i].id == h->id)
			break;
	if (i == H.nfly)
		return;
	c = H.fly[i].c;
	H.fly[i] = H.fly[--H.nfly];
	H.paused = false;
	if (h->type == HO_ACK) {
		atomic_fetch_add(&scoreboard->handed_over, 1);
		conn_handed(c, true, h->mark, &tail, &tlen);
		if (h->mark != 0)
			send_tail(w, h->id, tail, tlen);
		free(tail);
		return;
	}
	atomic_fetch_add(&scoreboard->handover_failed, 1);
	if (h->reason == HO_REFUSED) {
		log_info("%s: the new workers cannot take this session: it stays "
		    "until it ends or shutdown_timeout passes", c->peer);
		c->ho_stay = true;
	}
	stays(c);
}

/* The old worker's last words for a session parked here. */
static void
tail_came(const struct ho_hdr *h, const char *inl, size_t len, int memfd)
{
	struct parked **pp, *p;
	const char *state;
	char *own;

	for (pp = &H.parked; (p = *pp) != NULL; pp = &p->next)
		if (p->id == h->id)
			break;
	if (p == NULL)
		return;
	*pp = p->next;
	state = record_state(h, inl, len, memfd, &own);
	if (state == NULL)
		log_warnx("%s: the old worker's last lines could not be read", p->c->peer);
	conn_tail(p->c, state, state != NULL ? h->len : 0);
	free(own);
	conn_adopted(p->c);
	free(p);
}

/* A session offered to us. */
static void
adopt(struct worker *w, const struct ho_hdr *h, const char *inl, size_t len, int fds[2])
{
	struct ho_hdr a;
	struct session *c = NULL;
	struct parked *p = NULL;
	char why[128] = "";
	const char *state;
	char *own = NULL;
	uint64_t mark = 0;

	memset(&a, 0, sizeof(a));
	a.magic = HO_MAGIC;
	a.version = HO_VERSION;
	a.id = h->id;
	a.from = h->from;
	if (h->magic != HO_MAGIC || h->version != HO_VERSION || fds[0] < 0) {
		snprintf(why, sizeof(why), "a record this forkd cannot read (version %u)",
		    (unsigned)h->version);
	} else if (w->draining) {
		snprintf(why, sizeof(why), "this worker is retiring");
	} else if ((p = calloc(1, sizeof(*p))) == NULL) {
		snprintf(why, sizeof(why), "out of memory");
	} else if ((state = record_state(h, inl, len, fds[1], &own)) == NULL) {
		snprintf(why, sizeof(why), "its state cannot be read");
	} else {
		c = conn_adopt(w, fds[0], state, h->len, &mark, why, sizeof(why));
	}
	free(own);
	if (fds[1] >= 0)
		close(fds[1]);
	fds[1] = -1;
	if (c == NULL) {
		log_warnx("refusing a session handed over: %s", why);
		free(p);
		close_fds(fds);
		a.type = HO_NACK;
		a.reason = w->draining ? HO_BUSY : HO_REFUSED;
		if (send_answer(H.fd, &a) != 0)
			log_warn("cannot answer a handover");
		return;
	}
	fds[0] = -1;		/* the session's now */
	a.type = HO_ACK;
	a.mark = mark;
	if (send_answer(H.fd, &a) != 0)
		log_warn("%s: cannot confirm the handover", c->peer);
	if (mark == 0) {
		/* the old worker lets go only now: until here nobody read it */
		free(p);
		conn_adopted(c);
		return;
	}
	/* served once the old worker's last lines for it are here */
	p->id = h->id;
	p->c = c;
	p->next = H.parked;
	H.parked = p;
}

void
ho_worker_event(struct worker *w)
{
	static char buf[HO_RECORD_MAX];
	struct ho_hdr h;
	size_t len;
	int fds[2], r;

	while ((r = recv_record(H.fd, &h, buf, sizeof(buf), &len, fds)) > 0) {
		if (h.type == HO_OFFER)
			adopt(w, &h, buf, len, fds);
		else if (h.magic == HO_MAGIC && (h.type == HO_ACK || h.type == HO_NACK))
			settle(w, &h);
		else if (h.magic == HO_MAGIC && h.type == HO_TAIL)
			tail_came(&h, buf, len, fds[1]);
		else if (h.magic == HO_MAGIC && h.type == HO_GO)
			worker_hand_over(w);
		close_fds(fds);
	}
	if (r < 0 && (H.nfly > 0 || H.parked != NULL))
		ho_worker_abort(w);
	pump(w);
}

/* ---- master side ---- */

struct flight {
	uint64_t	 id;
	int		 from, to;
	bool		 acked;		/* the new worker waits for the tail */
	struct flight	*next;
};

static int		 mfd[FK_MAX_SLOTS + 1];	/* + HO_LINK */
static bool		 mfd_init;
static struct flight	*flights;
static long		 pending[FK_MAX_SLOTS + 1];
static unsigned		 link_version;

static void
mfd_setup(void)
{
	int i;

	if (mfd_init)
		return;
	for (i = 0; i <= FK_MAX_SLOTS; i++)
		mfd[i] = -1;
	mfd_init = true;
}

int
ho_master_pair(int slot, int *theirs)
{
	int sv[2], sz = HO_SOCKBUF;

	mfd_setup();
	if (mfd[slot] >= 0) {
		close(mfd[slot]);
		mfd[slot] = -1;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	/* best effort: a large window makes a handover of many sessions fast */
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	if (fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) != 0) {
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	mfd[slot] = sv[0];
	*theirs = sv[1];
	return sv[0];
}

int
ho_master_fd(int slot)
{
	mfd_setup();
	return mfd[slot];
}

void
ho_master_close_all(void)
{
	int i;

	mfd_setup();
	for (i = 0; i <= FK_MAX_SLOTS; i++) {
		if (mfd[i] >= 0)
			close(mfd[i]);
		mfd[i] = -1;
	}
}

void
ho_master_link(int fd)
{
	mfd_setup();
	if (fd >= 0)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	mfd[HO_LINK] = fd;
	pending[HO_LINK] = 0;
	link_version = 0;
}

int
ho_master_retire(int slot)
{
	struct ho_hdr h;

	mfd_setup();
	if (mfd[slot] < 0)
		return -1;
	memset(&h, 0, sizeof(h));
	h.magic = HO_MAGIC;
	h.version = HO_VERSION;
	h.type = HO_GO;
	return send_answer(mfd[slot], &h);
}

int
ho_master_ready(void)
{
	struct ho_hdr h;

	mfd_setup();
	if (mfd[HO_LINK] < 0)
		return -1;
	memset(&h, 0, sizeof(h));
	h.magic = HO_MAGIC;
	h.version = HO_VERSION;
	h.type = HO_READY;
	h.from = (int32_t)getpid();
	return send_answer(mfd[HO_LINK], &h);
}

unsigned
ho_master_link_version(void)
{
	return link_version;
}

long
ho_master_pending(int slot)
{
	return pending[slot];
}

static void
nack(int to, uint64_t id, uint32_t reason)
{
	struct ho_hdr h;

	if (to < 0 || mfd[to] < 0)
		return;
	memset(&h, 0, sizeof(h));
	h.magic = HO_MAGIC;
	h.version = HO_VERSION;
	h.type = HO_NACK;
	h.id = id;
	h.from = to;
	h.reason = reason;
	if (send_answer(mfd[to], &h) != 0)
		log_warn("cannot tell worker %d a handover failed", to);
}

static void
relay_offer(int slot, struct ho_hdr *h, const char *state, size_t len, int fds[2],
    int (*pick)(int))
{
	struct flight *f;
	int to, nfds = fds[1] >= 0 ? 2 : 1;

	h->from = slot;
	if (fds[0] < 0 || (to = pick(slot)) < 0 || mfd[to] < 0) {
		nack(slot, h->id, HO_BUSY);
		return;
	}
	if ((f = calloc(1, sizeof(*f))) == NULL ||
	    send_record(mfd[to], h, state, len, fds, nfds) != 0) {
		free(f);
		nack(slot, h->id, HO_BUSY);
		return;
	}
	f->id = h->id;
	f->from = slot;
	f->to = to;
	f->next = flights;
	flights = f;
	pending[to]++;
}

/* An empty tail: the old worker is gone, the new one must not wait. */
static void
tail_lost(const struct flight *f)
{
	struct ho_hdr t;

	if (mfd[f->to] < 0)
		return;
	memset(&t, 0, sizeof(t));
	t.magic = HO_MAGIC;
	t.version = HO_VERSION;
	t.type = HO_TAIL;
	t.id = f->id;
	t.from = f->from;
	if (send_answer(mfd[f->to], &t) != 0)
		log_warn("cannot tell worker %d a session's last lines are lost", f->to);
}

static struct flight **
find_flight(uint64_t id, int from, int to)
{
	struct flight **pp;

	for (pp = &flights; *pp != NULL; pp = &(*pp)->next)
		if ((*pp)->id == id && (from < 0 || (*pp)->from == from) &&
		    (to < 0 || (*pp)->to == to))
			return pp;
	return NULL;
}

static void
relay_answer(int slot, const struct ho_hdr *h)
{
	struct flight **pp, *f;

	if ((pp = find_flight(h->id, -1, slot)) == NULL || (*pp)->acked)
		return;
	f = *pp;
	pending[slot]--;
	if (f->from < 0) {
		/* its old worker died meanwhile: nothing more comes from there */
		if (h->type == HO_ACK && h->mark != 0)
			tail_lost(f);
		*pp = f->next;
		free(f);
		return;
	}
	if (f->from >= 0 && mfd[f->from] >= 0 && send_answer(mfd[f->from], h) != 0)
		log_warn("cannot tell worker %d how a handover went", f->from);
	if (h->type == HO_ACK && h->mark != 0) {
		f->acked = true;	/* its tail follows */
		return;
	}
	*pp = f->next;
	free(f);
}

static void
relay_tail(int slot, struct ho_hdr *h, const char *state, size_t len, int fds[2])
{
	struct flight **pp, *f;
	int n = 0, i;

	if ((pp = find_flight(h->id, slot, -1)) == NULL || !(*pp)->acked)
		return;
	f = *pp;
	*pp = f->next;
	for (i = 0; i < 2; i++)
		if (fds[i] >= 0)
			n++;
	if (mfd[f->to] >= 0 && send_record(mfd[f->to], h, state, len, fds, n) != 0 &&
	    (errno != EAGAIN || send_answer(mfd[f->to], h) != 0))
		log_warn("cannot pass a session's last lines to worker %d", f->to);
	free(f);
}

int
ho_master_event(int slot, int (*pick)(int))
{
	static char buf[HO_RECORD_MAX];
	struct ho_hdr h;
	size_t len;
	int fds[2], r;

	if (mfd[slot] < 0)
		return -1;
	while ((r = recv_record(mfd[slot], &h, buf, sizeof(buf), &len, fds)) > 0) {
		if (h.magic == HO_MAGIC && h.type == HO_READY && slot == HO_LINK) {
			/* the new master serves and reads records of this version */
			link_version = h.version != 0 ? h.version : 1;
			close_fds(fds);
			continue;
		}
		if (h.type == HO_OFFER)
			relay_offer(slot, &h, buf, len, fds, pick);
		else if (h.type == HO_ACK || h.type == HO_NACK)
			relay_answer(slot, &h);
		else if (h.type == HO_TAIL)
			relay_tail(slot, &h, buf, len, fds);
		close_fds(fds);
	}
	return r < 0 ? -1 : 0;
}

void
ho_master_gone(int slot, int (*pick)(int))
{
	struct flight **pp, *f;

	if (mfd[slot] < 0)
		return;
	/* answers it sent before it died still count */
	ho_master_event(slot, pick);
	for (pp = &flights; (f = *pp) != NULL;) {
		if (f->from == slot && f->to != slot && !f->acked) {
			/* the new worker's answer settles it */
			f->from = -1;
			pp = &f->next;
			continue;
		}
		if (f->to != slot && f->from != slot) {
			pp = &f->next;
			continue;
		}
		*pp = f->next;
		if (f->to == slot && !f->acked)
			nack(f->from, f->id, HO_BUSY);	/* it stays where it was */
		else if (f->from == slot && f->acked)
			tail_lost(f);
		free(f);
	}
	close(mfd[slot]);
	mfd[slot] = -1;
	pending[slot] = 0;
	if (slot == HO_LINK)
		link_version = 0;
}
