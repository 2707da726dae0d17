/*
 * The channel layer across hosts: the local layer (chan_local.c) for this
 * host's workers, and Redis for the other hosts.
 *
 * Lines: every line said here goes to this host's other workers through the
 * local rings, as without Redis, and once more to Redis, PUBLISHed on
 * PREFIX:chat with the sending worker's id and count (redis_proto.h).  Each
 * worker is subscribed to that channel and hands on what other hosts said;
 * what its own host said it has already had.  Lines of one sender leave
 * through one connection in order and arrive through one in order.
 *
 * Presence: the member list of every host is in Redis, each entry owned by
 * the worker that holds the member ("HOST.PID").  A worker's entries live as
 * long as its key PREFIX:alive:OWNER, which it refreshes every third of the
 * lease; one script (below) checks and changes the list atomically, and
 * first sweeps the entries of owners whose key has expired: a host killed
 * with everything on it leaves nobody behind for longer than the lease.
 *
 * Threads: two per worker, each with its own blocking hiredis connection,
 * made after fork.  The subscriber reads and delivers.  The publisher takes
 * what the chat threads queued (a bounded queue: a line that does not fit
 * is dropped and counted, never waited for) and pipelines it.  Presence
 * calls go through the same queue; the chat thread that asked waits for the
 * answer at most redis_timeout, then decides as the local layer would.
 *
 * When Redis cannot be reached, each worker goes on as the local layer (the
 * host's own members chat on), tells its members, and reconnects with a
 * backoff doubling up to BACKOFF_MAX_MS; once both connections are back it
 * registers its members again (a restarted Redis has forgotten them) and
 * tells its members.  Lines said while apart are not replayed.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "chan.h"
#include "chan_local.h"
#include "config.h"
#include "log.h"
#include "redis_proto.h"
#include "scoreboard.h"
#include "util.h"

#define BACKOFF_MIN_MS	100
#define BACKOFF_MAX_MS	2000
#define BATCH_MAX	256		/* queued items sent in one pipeline */
#define GUEST_BLOCK	64		/* guest numbers taken from Redis at once */
#define CALL_ARGS	8

/*
 * One script for every presence change, so that each is atomic.
 * ARGV: prefix, op, then the op's arguments.  Keys:
 *   P:owners        set of owner ids with entries
 *   P:alive:OWNER   exists while the owner lives (PX lease)
 *   P:held:OWNER    set of "ROOM NICK" the owner holds
 *   P:room:ROOM     hash NICK -> OWNER
 *   P:rooms         set of rooms with members
 * Verdicts are chan.h's: 0 ok, -1 taken, -2 room full, -3 too many rooms,
 * -4 not ours.
 */
static const char script[] =
"local P, op = ARGV[1], ARGV[2]\n"
"local function drop(o, room, nick)\n"
"  local rk = P..':room:'..room\n"
"  if redis.call('HGET', rk, nick) == o then\n"
"    redis.call('HDEL', rk, nick)\n"
"    if redis.call('HLEN', rk) == 0 then redis.call('SREM', P..':rooms', room) end\n"
"  end\n"
"  redis.call('SREM', P..':held:'..o, room..' '..nick)\n"
"end\n"
"local function reset(o)\n"
"  for _, e in ipairs(redis.call('SMEMBERS', P..':held:'..o)) do\n"
"    local sp = string.find(e, ' ', 1, true)\n"
"    if sp then drop(o, string.sub(e, 1, sp - 1), string.sub(e, sp + 1)) end\n"
"  end\n"
"  redis.call('DEL', P..':held:'..o)\n"
"end\n"
"local function sweep()\n"
"  for _, o in ipairs(redis.call('SMEMBERS', P..':owners')) do\n"
"    if redis.call('EXISTS', P..':alive:'..o) == 0 then\n"
"      reset(o)\n"
"      redis.call('SREM', P..':owners', o)\n"
"    end\n"
"  end\n"
"end\n"
"local function touch(o, lease)\n"
"  redis.call('SET', P..':alive:'..o, '1', 'PX', lease)\n"
"  redis.call('SADD', P..':owners', o)\n"
"end\n"
"if op == 'touch' then touch(ARGV[3], ARGV[4]) return 0 end\n"
"if op == 'reset' then touch(ARGV[3], ARGV[4]) reset(ARGV[3]) return 0 end\n"
"if op == 'leave' then drop(ARGV[5], ARGV[3], ARGV[4]) return 0 end\n"
"if op == 'adopt' then\n"
"  local room, nick, o = ARGV[3], ARGV[4], ARGV[5]\n"
"  local rk = P..':room:'..room\n"
"  local cur = redis.call('HGET', rk, nick)\n"
"  if cur and cur ~= o then redis.call('SREM', P..':held:'..cur, room..' '..nick) end\n"
"  touch(o, ARGV[6])\n"
"  redis.call('HSET', rk, nick, o)\n"
"  redis.call('SADD', P..':rooms', room)\n"
"  redis.call('SADD', P..':held:'..o, room..' '..nick)\n"
"  return 0\n"
"end\n"
"sweep()\n"
"if op == 'join' then\n"
"  local room, nick, o = ARGV[3], ARGV[4], ARGV[5]\n"
"  local rk = P..':room:'..room\n"
"  local cur = redis.call('HGET', rk, nick)\n"
"  if cur == o then return 0 end\n"
"  if cur then return -1 end\n"
"  if redis.call('HLEN', rk) >= tonumber(ARGV[6]) then return -2 end\n"
"  if redis.call('SISMEMBER', P..':rooms', room) == 0 and\n"
"     redis.call('SCARD', P..':rooms') >= tonumber(ARGV[7]) then return -3 end\n"
"  touch(o, ARGV[8])\n"
"  redis.call('HSET', rk, nick, o)\n"
"  redis.call('SADD', P..':rooms', room)\n"
"  redis.call('SADD', P..':held:'..o, room..' '..nick)\n"
"  return 0\n"
"end\n"
"if op == 'rename' then\n"
"  local room, from, to, o = ARGV[3], ARGV[4], ARGV[5], ARGV[6]\n"
"  local rk = P..':room:'..room\n"
"  if redis.call('HGET', rk, from) ~= o then return -4 end\n"
"  if redis.call('HEXISTS', rk, to) == 1 then return -1 end\n"
"  redis.call('HDEL', rk, from)\n"
"  redis.call('HSET', rk, to, o)\n"
"  redis.call('SREM', P..':held:'..o, room..' '..from)\n"
"  redis.call('SADD', P..':held:'..o, room..' '..to)\n"
"  return 0\n"
"end\n"
"if op == 'who' then return redis.call('HKEYS', P..':room:'..ARGV[3]) end\n"
"if op == 'rooms' then\n"
"  local out = {}\n"
"  for _, r in ipairs(redis.call('SMEMBERS', P..':rooms')) do\n"
"    out[#out + 1] = r\n"
"    out[#out + 1] = redis.call('HLEN', P..':room:'..r)\n"
"  end\n"
"  return out\n"
"end\n"
"return redis.error_reply('unknown op')\n";

/* what every worker of the host shares: made by the master */
struct redis_shm {
	char		 host[RP_HOST_LEN + 1];
	_Atomic int	 link[FK_MAX_SLOTS];	/* CHAN_LINK_* per worker slot */
	_Atomic uint64_t published, received, lost, links;
};

enum item_kind { ITEM_LINE, ITEM_CALL, ITEM_GUESTS };

struct item {
	struct item	*next;
	enum item_kind	 kind;
	/* ITEM_CALL: the script's arguments after prefix; state under qlock */
	int		 argc;
	char		 args[CALL_ARGS][48];
	bool		 waited;	/* someone waits for the reply */
	bool		 done, abandoned;
	redisReply	*reply;
	/* ITEM_LINE */
	size_t		 len;
	char		 data[];
};

static struct redis_shm	*rs;
static bool		 active;	/* this worker uses Redis */
static int		 my_slot;
static char		*r_prefix, *r_password;
static struct rp_addr	 r_addr;
static int		 lease_ms, timeout_ms, queue_max;
static char		 owner[RP_OWNER_MAX + 1];
static char		 channel[RP_PREFIX_MAX + 8];
static chan_notice_fn	 notice;
static chan_deliver_fn	 deliver;
static struct chan_limits limits;

static pthread_mutex_t	 qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 qcond;		/* the publisher: work queued */
static pthread_cond_t	 dcond;		/* callers: a call is done */
static struct item	*qhead, **qtail = &qhead;
static int		 qlines;	/* ITEM_LINE queued */
static bool		 resync;	/* register every member again */
static bool		 pub_up, sub_up, ever_up;
static int		 link_now = CHAN_LINK_DOWN;
static _Atomic bool	 link_up;
static uint64_t		 seq;
static unsigned		 guest_next, guest_end;	/* [next, end) from Redis */
static bool		 guest_asked;
static int		 sub_fd = -1;	/* to cut a hung subscriber (under qlock) */

static void	enqueue(struct item *);

int
chan_setup(void)
{
	uint8_t raw[RP_HOST_LEN / 2];
	void *p;
	size_t i;

	if (chan_local_setup() != 0)
		return -1;
	if (rs != NULL)
		return 0;
	p = mmap(NULL, sizeof(*rs), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
	    -1, 0);
	if (p == MAP_FAILED)
		return -1;
	rs = p;
	/* the host's id for as long as the master lives: reloads keep it */
	if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
		uint64_t x = now_ms() ^ ((uint64_t)getpid() << 32);

		memcpy(raw, &x, sizeof(raw));
	}
	for (i = 0; i < sizeof(raw); i++)
		snprintf(rs->host + 2 * i, 3, "%02x", raw[i]);
	return 0;
}

int
chan_use_redis(const struct chan_redis *r, chan_notice_fn fn)
{
	char err[200];
	pthread_condattr_t ca;

	if (rs == NULL) {
		errno = ENXIO;
		return -1;
	}
	if (rp_parse_address(r->address, &r_addr, err, sizeof(err)) != 0 ||
	    !rp_valid_prefix(r->prefix)) {
		errno = EINVAL;
		return -1;
	}
	r_prefix = strdup(r->prefix);
	r_password = r->password != NULL && r->password[0] != '\0' ?
	    strdup(r->password) : NULL;
	if (r_prefix == NULL || (r->password != NULL && r->password[0] != '\0' &&
	    r_password == NULL))
		return -1;
	lease_ms = r->lease_ms;
	timeout_ms = r->timeout_ms;
	queue_max = r->queue;
	notice = fn;
	snprintf(owner, sizeof(owner), "%s.%ld", rs->host, (long)getpid());
	snprintf(channel, sizeof(channel), "%s:chat", r_prefix);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&qcond, &ca);
	pthread_cond_init(&dcond, &ca);
	pthread_condattr_destroy(&ca);
	active = true;
	return 0;
}

/* ---- link state ---- */

/* qlock held; the notice to send after unlocking, or NULL */
static const char *
link_update(void)
{
	int now = pub_up && sub_up ? CHAN_LINK_UP : CHAN_LINK_DOWN;
	const char *say = NULL;

	if (now == link_now)
		return NULL;
	link_now = now;
	atomic_store(&link_up, now == CHAN_LINK_UP);
	atomic_store(&rs->link[my_slot], now);
	if (now == CHAN_LINK_UP) {
		atomic_fetch_add(&rs->links, 1);
		log_debug("chat: linked to the other hosts through Redis");
		/* at start nobody is there to hear it, unless Redis was late */
		say = ever_up ? "* other hosts are in reach again; lines said while they "
		    "were out of reach were not delivered\r\n" :
		    "* other hosts are in reach now: rooms span them\r\n";
		ever_up = true;
	} else {
		log_debug("chat: the link to Redis is down");
		if (ever_up)
			say = "* other hosts are out of reach: chat goes on with this host's "
			    "members only, and lines said meanwhile will not be replayed\r\n";
	}
	return say;
}

static void
set_state(bool *which, bool up)
{
	const char *say;

	pthread_mutex_lock(&qlock);
	*which = up;
	say = link_update();
	if (up && which == &sub_up) {
		/* whatever happened while apart, Redis may have forgotten us */
		resync = true;
		pthread_cond_signal(&qcond);
	}
	pthread_mutex_unlock(&qlock);
	if (say != NULL && notice != NULL)
		notice(say, strlen(say));
}

bool
chan_may_wait(void)
{
	return active && atomic_load_explicit(&link_up, memory_order_relaxed);
}

int
chan_link(void)
{
	int i, worst = CHAN_LINK_NONE;

	if (rs == NULL)
		return CHAN_LINK_NONE;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		int st = atomic_load(&scoreboard->slot[i].state);
		int l = atomic_load(&rs->link[i]);

		if (st == SLOT_FREE || st == SLOT_STARTING || l == CHAN_LINK_NONE)
			continue;
		if (worst == CHAN_LINK_NONE || l == CHAN_LINK_DOWN)
			worst = l;
	}
	return worst;
}

void
chan_counters(struct chan_counters *c)
{
	memset(c, 0, sizeof(*c));
	if (rs == NULL)
		return;
	c->published = atomic_load(&rs->published);
	c->received = atomic_load(&rs->received);
	c->lost = atomic_load(&rs->lost);
	c->links = atomic_load(&rs->links);
}

/* ---- connections ---- */

static struct timeval
ms_tv(int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	return tv;
}

/* A connection, authenticated; NULL when Redis cannot be reached. */
static redisContext *
connect_redis(const char *role)
{
	redisContext *c;
	redisReply *r;

	if (r_addr.is_unix)
		c = redisConnectUnixWithTimeout(r_addr.path, ms_tv(timeout_ms));
	else
		c = redisConnectWithTimeout(r_addr.host, r_addr.port, ms_tv(timeout_ms));
	if (c == NULL)
		return NULL;
	if (c->err) {
		log_debug("chat: cannot connect the Redis %s: %s", role, c->errstr);
		redisFree(c);
		return NULL;
	}
	rp_limit_reader(c->reader);
	redisEnableKeepAlive(c);
	redisSetTimeout(c, ms_tv(timeout_ms));
	if (r_password != NULL) {
		r = redisCommand(c, "AUTH %s", r_password);
		if (r == NULL || r->type == REDIS_REPLY_ERROR) {
			log_debug("chat: Redis refused the password: %s",
			    r != NULL ? r->str : c->errstr);
			if (r != NULL)
				freeReplyObject(r);
			redisFree(c);
			return NULL;
		}
		freeReplyObject(r);
	}
	return c;
}

/*
 * A connection failed: from now on the host's link counts as down for this
 * worker (until its first attempt it counts as nothing, so that a start
 * with Redis in reach does not look like an outage).
 */
static void
backoff(int *ms)
{
	struct timespec ts = { *ms / 1000, (long)(*ms % 1000) * 1000000L };

	pthread_mutex_lock(&qlock);
	atomic_store(&rs->link[my_slot], link_now);
	pthread_mutex_unlock(&qlock);
	nanosleep(&ts, NULL);
	*ms = MIN(*ms * 2, BACKOFF_MAX_MS);
}

/* ---- the subscriber ---- */

static void
on_push(const redisReply *r)
{
	struct rp_msg m;
	const char *payload;
	size_t len;

	if (rp_push_classify(r, channel, &payload, &len) != RP_PUSH_MESSAGE)
		return;
	if (rp_msg_parse(payload, len, &m) != 0) {
		log_debug("chat: ignored a malformed line on %s", channel);
		return;
	}
	if (strcmp(m.host, rs->host) == 0)
		return;		/* this host's workers had it through the rings */
	atomic_fetch_add_explicit(&rs->received, 1, memory_order_relaxed);
	deliver(m.room, m.line, m.len, 0);
}

static void *
subscriber(void *arg)
{
	int wait_ms = BACKOFF_MIN_MS;

	(void)arg;
	for (;;) {
		redisContext *c = connect_redis("subscriber");
		redisReply *r = NULL;
		bool subscribed = false;
		const char *payload;
		size_t plen;

		if (c == NULL) {
			backoff(&wait_ms);
			continue;
		}
		/* a subscriber waits as long as it takes; keepalive and the
		 * publisher's cut (below) find a dead server */
		redisSetTimeout(c, ms_tv(0));
		pthread_mutex_lock(&qlock);
		sub_fd = c->fd;
		pthread_mutex_unlock(&qlock);
		if (redisAppendCommand(c, "SUBSCRIBE %s", channel) == REDIS_OK) {
			while (redisGetReply(c, (void **)&r) == REDIS_OK) {
				enum rp_push k = rp_push_classify(r, channel, &payload, &plen);

				if (k == RP_PUSH_SUBSCRIBED && !subscribed) {
					subscribed = true;
					wait_ms = BACKOFF_MIN_MS;
					set_state(&sub_up, true);
				} else if (k == RP_PUSH_ERROR) {
					log_debug("chat: Redis: %s", r->str);
					break;
				} else if (subscribed) {
					on_push(r);
				}
				freeReplyObject(r);
				r = NULL;
			}
		}
		if (r != NULL)
			freeReplyObject(r);
		log_debug("chat: the Redis subscriber lost its link: %s",
		    c->err ? c->errstr : "error reply");
		pthread_mutex_lock(&qlock);
		sub_fd = -1;
		pthread_mutex_unlock(&qlock);
		redisFree(c);
		set_state(&sub_up, false);
		backoff(&wait_ms);
	}
	return NULL;
}

/* ---- the publisher ---- */

/* qlock held */
static void
finish(struct item *it, redisReply *r)
{
	if (it->kind == ITEM_GUESTS) {
		long long top;

		guest_asked = false;
		if (r != NULL && rp_reply_int(r, &top) == 0 && top >= GUEST_BLOCK &&
		    top < 4000000000LL) {
			guest_next = (unsigned)(top - GUEST_BLOCK + 1);
			guest_end = (unsigned)top + 1;
		}
	}
	if (it->kind == ITEM_CALL && it->waited && !it->abandoned) {
		it->reply = r;
		it->done = true;
		pthread_cond_broadcast(&dcond);
		return;
	}
	if (r != NULL)
		freeReplyObject(r);
	free(it);
}

static int
append_call(redisContext *c, const char *sha, int argc, char args[][48])
{
	const char *argv[CALL_ARGS + 5];
	size_t lens[CALL_ARGS + 5];
	int i, n = 0;

	argv[n++] = "EVALSHA";
	argv[n++] = sha;
	argv[n++] = "0";
	argv[n++] = r_prefix;
	for (i = 0; i < argc; i++)
		argv[n++] = args[i];
	for (i = 0; i < n; i++)
		lens[i] = strlen(argv[i]);
	return redisAppendCommandArgv(c, n, argv, lens);
}

struct reg {
	redisContext	*c;
	const char	*sha;
	int		 sent;
};

static void
register_one(const char *room, const char *nick, void *arg)
{
	struct reg *g = arg;
	char args[7][48];

	snprintf(args[0], 48, "join");
	snprintf(args[1], 48, "%s", room);
	snprintf(args[2], 48, "%s", nick);
	snprintf(args[3], 48, "%s", owner);
	snprintf(args[4], 48, "%d", 1000000);	/* already in: no limit refuses */
	snprintf(args[5], 48, "%d", 1000000);
	snprintf(args[6], 48, "%d", lease_ms);
	if (append_call(g->c, g->sha, 7, args) == REDIS_OK)
		g->sent++;
}

/* Forget what Redis holds for us and register this worker's members again. */
static int
register_all(redisContext *c, const char *sha)
{
	struct reg g = { c, sha, 0 };
	char args[3][48];
	redisReply *r;
	int conflicts = 0, i;

	snprintf(args[0], 48, "reset");
	snprintf(args[1], 48, "%s", owner);
	snprintf(args[2], 48, "%d", lease_ms);
	if (append_call(c, sha, 3, args) != REDIS_OK)
		return -1;
	chan_local_own(register_one, &g);
	for (i = 0; i <= g.sent; i++) {
		long long v;

		if (redisGetReply(c, (void **)&r) != REDIS_OK)
			return -1;
		if (r->type == REDIS_REPLY_ERROR) {
			log_debug("chat: Redis: %s", r->str);
			freeReplyObject(r);
			return -1;
		}
		if (i > 0 && rp_reply_int(r, &v) == 0 && v != 0)
			conflicts++;
		freeReplyObject(r);
	}
	if (conflicts > 0)
		log_warnx("chat: %d members of this worker chose, while other hosts were "
		    "out of reach, nicks that are in use there too", conflicts);
	return 0;
}

static void
cut_subscriber(void)
{
	pthread_mutex_lock(&qlock);
	if (sub_fd >= 0)
		shutdown(sub_fd, SHUT_RDWR);
	pthread_mutex_unlock(&qlock);
}

/* Everything queued, answered "no link". */
static void
fail_queue(void)
{
	struct item *it, *next;

	pthread_mutex_lock(&qlock);
	it = qhead;
	qhead = NULL;
	qtail = &qhead;
	qlines = 0;
	for (; it != NULL; it = next) {
		next = it->next;
		finish(it, NULL);
	}
	pthread_mutex_unlock(&qlock);
}

static void *
publisher(void *arg)
{
	struct item *batch[BATCH_MAX];
	redisContext *c = NULL;
	char sha[48] = "";
	uint64_t touch_at = 0;
	int wait_ms = BACKOFF_MIN_MS, n, i;

	(void)arg;
	for (;;) {
		struct timespec until;
		bool again = false, sync;
		uint64_t now;

		if (c == NULL) {
			redisReply *r;

			c = connect_redis("publisher");
			r = c != NULL ? redisCommand(c, "SCRIPT LOAD %s", script) : NULL;
			if (r == NULL || r->type != REDIS_REPLY_STRING ||
			    (size_t)r->len >= sizeof(sha)) {
				if (r != NULL)
					freeReplyObject(r);
				if (c != NULL)
					redisFree(c);
				c = NULL;
				fail_queue();
				backoff(&wait_ms);
				continue;
			}
			snprintf(sha, sizeof(sha), "%s", r->str);
			freeReplyObject(r);
			wait_ms = BACKOFF_MIN_MS;
			pthread_mutex_lock(&qlock);
			resync = true;
			pthread_mutex_unlock(&qlock);
		}

		pthread_mutex_lock(&qlock);
		for (;;) {
			now = now_ms();
			if (qhead != NULL || resync || now >= touch_at)
				break;
			until.tv_sec = (time_t)(touch_at / 1000);
			until.tv_nsec = (long)(touch_at % 1000) * 1000000L;
			pthread_cond_timedwait(&qcond, &qlock, &until);
		}
		sync = resync;
		resync = false;
		pthread_mutex_unlock(&qlock);

		if (sync) {
			if (register_all(c, sha) != 0)
				goto broken;
			set_state(&pub_up, true);
			pthread_mutex_lock(&qlock);
			if (guest_next >= guest_end && !guest_asked) {
				struct item *it = calloc(1, sizeof(*it));

				if (it != NULL) {
					it->kind = ITEM_GUESTS;
					guest_asked = true;
					enqueue(it);
				}
			}
			pthread_mutex_unlock(&qlock);
			touch_at = now_ms() + (uint64_t)lease_ms / 3;
		} else if (now >= touch_at) {
			char args[3][48];
			redisReply *r;

			snprintf(args[0], 48, "touch");
			snprintf(args[1], 48, "%s", owner);
			snprintf(args[2], 48, "%d", lease_ms);
			if (append_call(c, sha, 3, args) != REDIS_OK ||
			    redisGetReply(c, (void **)&r) != REDIS_OK)
				goto broken;
			again = r->type == REDIS_REPLY_ERROR;
			freeReplyObject(r);
			if (again)
				goto broken;
			touch_at = now_ms() + (uint64_t)lease_ms / 3;
		}

		/* what was queued, in order, as one pipeline */
		pthread_mutex_lock(&qlock);
		for (n = 0; n < BATCH_MAX && qhead != NULL; n++) {
			batch[n] = qhead;
			qhead = qhead->next;
			if (batch[n]->kind == ITEM_LINE)
				qlines--;
		}
		if (qhead == NULL)
			qtail = &qhead;
		pthread_mutex_unlock(&qlock);
		for (i = 0; i < n; i++) {
			struct item *it = batch[i];
			int rc;

			if (it->kind == ITEM_LINE)
				rc = redisAppendCommand(c, "PUBLISH %s %b", channel, it->data,
				    it->len);
			else if (it->kind == ITEM_GUESTS)
				rc = redisAppendCommand(c, "INCRBY %s:guest %d", r_prefix,
				    GUEST_BLOCK);
			else
				rc = append_call(c, sha, it->argc, it->args);
			if (rc != REDIS_OK)
				break;
		}
		for (i = 0; i < n; i++) {
			redisReply *r = NULL;

			if (redisGetReply(c, (void **)&r) != REDIS_OK)
				break;
			if (batch[i]->kind == ITEM_LINE)
				atomic_fetch_add_explicit(&rs->published, 1,
				    memory_order_relaxed);
			if (r->type == REDIS_REPLY_ERROR) {
				log_debug("chat: Redis: %s", r->str);
				again = strncmp(r->str, "NOSCRIPT", 8) == 0;
			}
			pthread_mutex_lock(&qlock);
			finish(batch[i], r);
			pthread_mutex_unlock(&qlock);
			batch[i] = NULL;
		}
		if (i == n && !again)
			continue;
		/* the rest never got an answer */
		pthread_mutex_lock(&qlock);
		for (; i < n; i++)
			if (batch[i] != NULL)
				finish(batch[i], NULL);
		pthread_mutex_unlock(&qlock);
broken:
		log_debug("chat: the Redis publisher lost its link: %s",
		    c->err ? c->errstr : "error reply");
		redisFree(c);
		c = NULL;
		set_state(&pub_up, false);
		cut_subscriber();	/* both come back, and register, together */
		fail_queue();
	}
	return NULL;
}

/* ---- the calls ---- */

static void
enqueue(struct item *it)
{
	it->next = NULL;
	*qtail = it;
	qtail = &it->next;
	pthread_cond_signal(&qcond);
}

/*
 * Run the presence script with args (after the prefix) and wait for its
 * reply, at most timeout_ms: NULL when the link is down or Redis is slow,
 * and the caller decides as the local layer would.
 */
static redisReply *
call(int argc, const char *const *args)
{
	struct item *it;
	struct timespec until;
	redisReply *r = NULL;
	uint64_t end;
	int i;

	if (!active || !atomic_load(&link_up))
		return NULL;
	if ((it = calloc(1, sizeof(*it))) == NULL)
		return NULL;
	it->kind = ITEM_CALL;
	it->argc = argc;
	for (i = 0; i < argc && i < CALL_ARGS; i++)
		snprintf(it->args[i], sizeof(it->args[i]), "%s", args[i]);
	it->waited = true;
	end = now_ms() + (uint64_t)timeout_ms;
	until.tv_sec = (time_t)(end / 1000);
	until.tv_nsec = (long)(end % 1000) * 1000000L;
	pthread_mutex_lock(&qlock);
	enqueue(it);
	while (!it->done &&
	    pthread_cond_timedwait(&dcond, &qlock, &until) != ETIMEDOUT)
		;
	if (it->done) {
		r = it->reply;
		free(it);
	} else {
		it->abandoned = true;	/* the publisher frees it */
	}
	pthread_mutex_unlock(&qlock);
	return r;
}

/* Fire and forget (a leave): the publisher frees it. */
static void
post(int argc, const char *const *args)
{
	struct item *it;
	int i;

	if (!active || !atomic_load(&link_up))
		return;
	if ((it = calloc(1, sizeof(*it))) == NULL) {
		pthread_mutex_lock(&qlock);
		resync = true;		/* Redis would keep an entry we dropped */
		pthread_cond_signal(&qcond);
		pthread_mutex_unlock(&qlock);
		return;
	}
	it->kind = ITEM_CALL;
	it->argc = argc;
	for (i = 0; i < argc && i < CALL_ARGS; i++)
		snprintf(it->args[i], sizeof(it->args[i]), "%s", args[i]);
	pthread_mutex_lock(&qlock);
	enqueue(it);
	pthread_mutex_unlock(&qlock);
}

int
chan_start(int slot, const struct chan_limits *lim, chan_deliver_fn fn)
{
	pthread_t tid;

	if (chan_local_start(slot, lim, fn) != 0)
		return -1;
	my_slot = slot;
	limits = *lim;
	deliver = fn;
	if (!active) {
		atomic_store(&rs->link[slot], CHAN_LINK_NONE);
		return 0;
	}
	atomic_store(&rs->link[slot], CHAN_LINK_NONE);
	if (pthread_create(&tid, NULL, publisher, NULL) != 0)
		return -1;
	pthread_setname_np(tid, "forkd-redis-pub");
	pthread_detach(tid);
	if (pthread_create(&tid, NULL, subscriber, NULL) != 0)
		return -1;
	pthread_setname_np(tid, "forkd-redis-sub");
	pthread_detach(tid);
	return 0;
}

void
chan_mark(const char *room, void (*fn)(uint64_t, void *), void *arg)
{
	chan_local_mark(room, fn, arg);
}

uint64_t
chan_seen(const char *room)
{
	return chan_local_seen(room);
}

uint64_t
chan_world(void)
{
	return chan_local_world();
}

int
chan_publish(const char *room, const char *line, size_t len, chan_deliver_fn local)
{
	struct item *it;
	size_t cap;
	int n;

	if (chan_local_publish(room, line, len, local) != 0)
		return -1;
	/* lines said while the link is down are not kept for later */
	if (!active || !atomic_load_explicit(&link_up, memory_order_relaxed))
		return 0;
	cap = len + RP_OWNER_MAX + RP_NAME_MAX + 32;
	if ((it = malloc(sizeof(*it) + cap)) == NULL)
		return -1;
	it->kind = ITEM_LINE;
	pthread_mutex_lock(&qlock);
	n = rp_msg_format(it->data, cap, owner, ++seq, room, line, len);
	if (n < 0 || qlines >= queue_max) {
		pthread_mutex_unlock(&qlock);
		free(it);
		atomic_fetch_add_explicit(&rs->lost, 1, memory_order_relaxed);
		return -1;
	}
	it->len = (size_t)n;
	qlines++;
	enqueue(it);
	pthread_mutex_unlock(&qlock);
	return 0;
}

static void
num_arg(char *buf, int v)
{
	snprintf(buf, 16, "%d", v);
}

int
chan_join(const char *room, const char *nick)
{
	char mm[16], mr[16], lease[16];
	const char *args[7];
	redisReply *r;
	long long v;
	int rc;

	if ((rc = chan_local_join(room, nick)) != CHAN_OK || !active)
		return rc;
	num_arg(mm, limits.max_members);
	num_arg(mr, limits.max_rooms);
	num_arg(lease, lease_ms);
	args[0] = "join";
	args[1] = room;
	args[2] = nick;
	args[3] = owner;
	args[4] = mm;
	args[5] = mr;
	args[6] = lease;
	if ((r = call(7, args)) == NULL)
		return CHAN_OK;		/* this host's word stands */
	if (rp_reply_int(r, &v) == 0 && v < 0 && v >= CHAN_TOO_MANY) {
		chan_local_leave(room, nick);
		rc = (int)v;
	}
	freeReplyObject(r);
	return rc;
}

void
chan_leave(const char *room, const char *nick)
{
	const char *args[4] = { "leave", room, nick, owner };

	chan_local_leave(room, nick);
	post(4, args);
}

/*
 * The entry moves from the old owner's held set to ours in one step, so
 * that nobody can take the nick in between; posted, not waited for: the
 * handover must not wait on Redis, and the host's table already says so.
 */
int
chan_adopt(const char *room, const char *nick)
{
	char lease[16];
	const char *args[5] = { "adopt", room, nick, owner, lease };
	int rc;

	if ((rc = chan_local_adopt(room, nick)) != CHAN_OK || !active)
		return rc;
	num_arg(lease, lease_ms);
	post(5, args);
	return CHAN_OK;
}

int
chan_rename(const char *room, const char *from, const char *to)
{
	const char *args[5] = { "rename", room, from, to, owner };
	redisReply *r;
	long long v;
	int rc;

	if ((rc = chan_local_rename(room, from, to)) != CHAN_OK || !active)
		return rc;
	if ((r = call(5, args)) == NULL)
		return CHAN_OK;
	if (rp_reply_int(r, &v) == 0 && v == CHAN_TAKEN) {
		chan_local_rename(room, to, from);
		rc = CHAN_TAKEN;
	}
	freeReplyObject(r);
	return rc;
}

int
chan_who(const char *room, char *buf, size_t len)
{
	const char *args[2] = { "who", room };
	redisReply *r;
	int n;

	if ((r = call(2, args)) == NULL)
		return chan_local_who(room, buf, len);
	n = rp_who(r, buf, len);
	freeReplyObject(r);
	return n >= 0 ? n : chan_local_who(room, buf, len);
}

int
chan_rooms(char *buf, size_t len)
{
	const char *args[1] = { "rooms" };
	redisReply *r;
	int n;

	if ((r = call(1, args)) == NULL)
		return chan_local_rooms(buf, len);
	n = rp_rooms(r, buf, len);
	freeReplyObject(r);
	return n >= 0 ? n : chan_local_rooms(buf, len);
}

/*
 * Guest numbers come in blocks from a counter in Redis, so that two hosts
 * never hand out the same one; without the link, from the host's own
 * counter (a clash is refused like any taken nick).
 */
unsigned
chan_next_guest(void)
{
	unsigned n = 0;

	if (!active)
		return chan_local_next_guest();
	pthread_mutex_lock(&qlock);
	if (guest_next < guest_end)
		n = guest_next++;
	if (guest_end - guest_next < GUEST_BLOCK / 2 && !guest_asked &&
	    atomic_load(&link_up)) {
		struct item *it = calloc(1, sizeof(*it));

		if (it != NULL) {
			it->kind = ITEM_GUESTS;
			guest_asked = true;
			enqueue(it);
		}
	}
	pthread_mutex_unlock(&qlock);
	if (n != 0)
		return n;
	/* numbers no block from Redis hands out, different on each host */
	return 1000000000u + (unsigned)strtoul(rs->host + RP_HOST_LEN - 4, NULL, 16) *
	    10000u + chan_local_next_guest() % 10000u;
}
