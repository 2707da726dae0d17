/*
 * chat: rooms of clients.  A line from a member reaches every other member
 * of its room as "[nick] text", whichever worker holds them: members of this
 * worker directly, the others through the channel layer (chan.h).
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "chan.h"
#include "config.h"
#include "log.h"
#include "redis_proto.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"

#define NAME_MAX_LEN	32
#define LIST_MAX	65536	/* bytes of a /who or /rooms reply */
#define MESSAGE_MAX	60000	/* bytes of one chat line */
#define ROOM_BUCKETS	256

/*
 * A /who or /rooms reply gets at most a quarter of the session's output
 * limit, so that the reply itself never makes a reading client look too
 * slow (the longest list is cut with "...", the count stays whole).
 */
static size_t	 list_max = LIST_MAX;

struct chat_conf {
	char	*default_room;
	int	 max_rooms;
	int	 max_members;
	int	 layer;			/* LAYER_* */
	char	*redis_address;
	char	*redis_prefix;
	char	*redis_password_file;
	int	 presence_lease;	/* seconds */
	int	 redis_timeout;		/* milliseconds */
	int	 redis_queue;
};

enum { LAYER_LOCAL, LAYER_REDIS };
static const char *const layer_names[] = { "local", "redis", NULL };

/* read by the master (it may be readable by the starting user only) */
static char	 redis_password[512];

static const struct setting chat_settings[] = {
	{ "default_room", SET_STRING, offsetof(struct chat_conf, default_room), 0,
	    NAME_MAX_LEN, 0, "lobby", NULL },
	{ "max_rooms", SET_INT, offsetof(struct chat_conf, max_rooms), 1, 100000, 1000,
	    NULL, NULL },
	{ "max_members", SET_INT, offsetof(struct chat_conf, max_members), 1, 100000, 1000,
	    NULL, NULL },
	{ "layer", SET_ENUM, offsetof(struct chat_conf, layer), 0, 0, LAYER_LOCAL,
	    NULL, layer_names },
	{ "redis_address", SET_STRING, offsetof(struct chat_conf, redis_address), 0,
	    200, 0, "127.0.0.1:6379", NULL },
	{ "redis_prefix", SET_STRING, offsetof(struct chat_conf, redis_prefix), 0,
	    RP_PREFIX_MAX, 0, "forkd", NULL },
	{ "redis_password_file", SET_STRING,
	    offsetof(struct chat_conf, redis_password_file), 0, 1024, 0, "", NULL },
	{ "presence_lease", SET_INT, offsetof(struct chat_conf, presence_lease), 1, 3600,
	    15, NULL, NULL },
	{ "redis_timeout", SET_INT, offsetof(struct chat_conf, redis_timeout), 10, 60000,
	    500, NULL, NULL },
	{ "redis_queue", SET_INT, offsetof(struct chat_conf, redis_queue), 1, 1000000,
	    10000, NULL, NULL },
	{ NULL, 0, 0, 0, 0, 0, NULL, NULL }
};

static int
chat_check(const void *vconf, const char **key, char *msg, size_t len)
{
	const struct chat_conf *conf = vconf;
	struct rp_addr a;
	char why[200];

	if (rp_parse_address(conf->redis_address, &a, why, sizeof(why)) != 0) {
		*key = "redis_address";
		snprintf(msg, len, "is not a Redis address: %s (got '%s')", why,
		    conf->redis_address);
		return -1;
	}
	if (!rp_valid_prefix(conf->redis_prefix)) {
		*key = "redis_prefix";
		snprintf(msg, len, "must be 1-%d letters, digits, '_', '-', '.' or ':'",
		    RP_PREFIX_MAX);
		return -1;
	}
	return 0;
}

/* A room line kept aside while its member moves to another worker. */
struct aside {
	struct aside	*next;
	uint64_t	 seq;
	size_t		 len;
	char		 line[];
};

#define ASIDE_MAX	(1024 * 1024)	/* bytes kept aside for one member */

struct member {
	struct session	*s;
	struct member	*prev, *next;	/* in its local room */
	struct lroom	*room;		/* NULL: in no room */
	char		 nick[NAME_MAX_LEN + 1];
	/*
	 * A handover (under rooms_lock): while `moving`, the room's lines wait
	 * in `aside` (the old worker: until it knows where the new one takes
	 * over; the new one: until the old one's last lines came).  Lines up
	 * to skip_upto are the old worker's to deliver.
	 */
	bool		 moving;
	uint64_t	 skip_upto;
	struct aside	*aside, **aside_tail;
	size_t		 aside_bytes;
};

/* The members of a room that this worker holds. */
struct lroom {
	char		 name[NAME_MAX_LEN + 1];
	struct member	*head;
	struct lroom	*next;
};

static pthread_mutex_t	 rooms_lock = PTHREAD_MUTEX_INITIALIZER;
static int		 my_slot;	/* this worker's scoreboard slot */
static struct lroom	*buckets[ROOM_BUCKETS];

static unsigned
hash(const char *s)
{
	unsigned h = 2166136261u;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % ROOM_BUCKETS;
}

/* rooms_lock held */
static struct lroom *
lroom_get(const char *name, bool create)
{
	struct lroom *r, **b = &buckets[hash(name)];

	for (r = *b; r != NULL; r = r->next)
		if (strcmp(r->name, name) == 0)
			return r;
	if (!create || (r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->next = *b;
	*b = r;
	return r;
}

/* rooms_lock held; an empty room is freed */
static void
lroom_remove(struct member *m)
{
	struct lroom *r = m->room, **pp;

	if (r == NULL)
		return;
	if (m->prev != NULL)
		m->prev->next = m->next;
	else
		r->head = m->next;
	if (m->next != NULL)
		m->next->prev = m->prev;
	m->prev = m->next = NULL;
	m->room = NULL;
	if (r->head != NULL)
		return;
	for (pp = &buckets[hash(r->name)]; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			free(r);
			return;
		}
	}
}

/* rooms_lock held */
static void
aside_add(struct member *m, const char *line, size_t len, uint64_t seq)
{
	struct aside *a;

	if (m->aside_bytes + len > ASIDE_MAX || (a = malloc(sizeof(*a) + len)) == NULL)
		return;		/* a member that far behind is dropped as too slow anyway */
	a->next = NULL;
	a->seq = seq;
	a->len = len;
	memcpy(a->line, line, len);
	if (m->aside == NULL)
		m->aside_tail = &m->aside;
	*m->aside_tail = a;
	m->aside_tail = &a->next;
	m->aside_bytes += len;
}

/* rooms_lock held: send what waited (up to seq upto; 0: all), free the rest */
static void
aside_flush(struct member *m, uint64_t upto, bool send)
{
	struct aside *a, *next;

	for (a = m->aside; a != NULL; a = next) {
		next = a->next;
		if (send && (upto == 0 || (a->seq != 0 && a->seq <= upto)))
			session_send(m->s, a->line, a->len);
		free(a);
	}
	m->aside = NULL;
	m->aside_tail = &m->aside;
	m->aside_bytes = 0;
}

/* rooms_lock held */
static void
deliver_to(struct member *m, const char *line, size_t len, uint64_t seq)
{
	if (seq != 0 && seq <= m->skip_upto)
		return;
	if (m->moving) {
		aside_add(m, line, len, seq);
		return;
	}
	session_send(m->s, line, len);
	session_wake(m->s);
	sb_count(&scoreboard->slot[my_slot].chat_delivered, 1);	/* metrics */
}

/* Hand a line to the local members of a room, except one. */
static void
deliver_local(const char *room, const char *line, size_t len, uint64_t seq,
    const struct member *except)
{
	struct lroom *r;
	struct member *m;

	pthread_mutex_lock(&rooms_lock);
	r = lroom_get(room, false);
	for (m = r != NULL ? r->head : NULL; m != NULL; m = m->next)
		if (m != except)
			deliver_to(m, line, len, seq);
	pthread_mutex_unlock(&rooms_lock);
}

/* from the channel layer: lines published by other workers */
static void
deliver_remote(const char *room, const char *line, size_t len, uint64_t seq)
{
	deliver_local(room, line, len, seq, NULL);
}

/* the sender's own worker: its members hear it in the room's order */
static __thread const struct member *sender;

static void
deliver_own(const char *room, const char *line, size_t len, uint64_t seq)
{
	deliver_local(room, line, len, seq, sender);
}

/* from the channel layer: news for everyone (the link to other hosts) */
static void
notice_all(const char *line, size_t len)
{
	struct lroom *r;
	struct member *m;
	int i;

	pthread_mutex_lock(&rooms_lock);
	for (i = 0; i < ROOM_BUCKETS; i++) {
		for (r = buckets[i]; r != NULL; r = r->next) {
			for (m = r->head; m != NULL; m = m->next)
				deliver_to(m, line, len, 0);
		}
	}
	pthread_mutex_unlock(&rooms_lock);
}

static void __attribute__((format(printf, 3, 4)))
broadcast(struct member *from, const char *room, const char *fmt, ...)
{
	char line[NAME_MAX_LEN * 2 + 65536 + 16];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	line[n++] = '\r';
	line[n++] = '\n';
	sender = from;
	chan_publish(room, line, (size_t)n, deliver_own);
	sender = NULL;
}

static bool
valid_name(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > NAME_MAX_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
			return false;
	return true;
}

static const char *
join_error(int rc)
{
	switch (rc) {
	case CHAN_TAKEN:	return "that nick is taken in that room";
	case CHAN_ROOM_FULL:	return "that room is full";
	case CHAN_TOO_MANY:	return "too many rooms";
	default:		return "chat is full";
	}
}

/* What the client can do instead, for an ERR line after join_error(). */
static const char *
join_hint(int rc)
{
	switch (rc) {
	case CHAN_TAKEN:	return "change yours first with /nick NAME";
	case CHAN_ROOM_FULL:	return "try another room (/rooms lists them)";
	case CHAN_TOO_MANY:	return "join one that exists (/rooms lists them)";
	default:		return "try again later";
	}
}

/* Enter a room the shared member list already holds us in: from now on
 * its lines reach us, and the room hears of it. */
static int
enter_local(struct member *m, const char *room)
{
	struct lroom *r;

	pthread_mutex_lock(&rooms_lock);
	r = lroom_get(room, true);
	if (r == NULL) {
		pthread_mutex_unlock(&rooms_lock);
		chan_leave(room, m->nick);
		return CHAN_FULL;
	}
	m->room = r;
	atomic_fetch_add_explicit(&scoreboard->slot[my_slot].chat_members, 1,
	    memory_order_relaxed);	/* metrics */
	m->prev = NULL;
	m->next = r->head;
	if (r->head != NULL)
		r->head->prev = m;
	r->head = m;
	pthread_mutex_unlock(&rooms_lock);
	broadcast(m, room, "* %s joined %s", m->nick, room);
	return CHAN_OK;
}

/* Enter a room: the shared member list first, then the local one. */
static int
enter(struct member *m, const char *room)
{
	int rc = chan_join(room, m->nick);

	return rc != CHAN_OK ? rc : enter_local(m, room);
}

static void
leave(struct member *m, const char *why)
{
	char room[NAME_MAX_LEN + 1];

	if (m->room == NULL)
		return;
	snprintf(room, sizeof(room), "%s", m->room->name);
	pthread_mutex_lock(&rooms_lock);
	lroom_remove(m);
	atomic_fetch_sub_explicit(&scoreboard->slot[my_slot].chat_members, 1,
	    memory_order_relaxed);	/* metrics */
	pthread_mutex_unlock(&rooms_lock);
	chan_leave(room, m->nick);
	broadcast(m, room, "* %s left %s%s", m->nick, room, why);
}

static void
chat_open(struct session *s)
{
	const struct chat_conf *conf = session_conf(s);
	struct member *m = session_data(s);
	int rc;

	m->s = s;
	snprintf(m->nick, sizeof(m->nick), "guest%u", chan_next_guest());
	rc = chan_join(conf->default_room, m->nick);
	/* the greeting is queued before the room can send us anything */
	if (rc != CHAN_OK) {
		session_reply(s, "* welcome to forkd chat: you are %s, in no room (%s: %s)",
		    m->nick, conf->default_room, join_error(rc));
	} else {
		session_reply(s, "* welcome to forkd chat: you are %s in room %s",
		    m->nick, conf->default_room);
	}
	session_reply(s, "* commands: /nick NAME, /join ROOM, /who, /rooms, /quit");
	if (rc == CHAN_OK)
		enter_local(m, conf->default_room);
}

static void
chat_close(struct session *s)
{
	struct member *m = session_data(s);

	leave(m, "");
	pthread_mutex_lock(&rooms_lock);
	aside_flush(m, 0, false);
	pthread_mutex_unlock(&rooms_lock);
}

/*
 * Handover.  The state is "ROOM NICK" ("" for no room): what the member is
 * to everyone else.  Its presence entry is taken over, never released, so
 * nobody sees it leave or can take its nick meanwhile.  The room's lines go
 * on while it moves: the old worker keeps them aside from the moment it
 * saves the member; the new one takes over from the room's next line (the
 * mark) and keeps its own aside until the old one has sent, as its last
 * words, those up to the mark.  Every line reaches the member once, in the
 * room's order.  An upgrade moves it to another host layer (another
 * world): the old worker then sends all it kept aside, and the two halves
 * of the room hear each other again once every member has moved.
 */
static int
chat_save(struct session *s, char *buf, size_t len)
{
	struct member *m = session_data(s);
	int n;

	pthread_mutex_lock(&rooms_lock);
	n = snprintf(buf, len, "%016llx %s %s", (unsigned long long)chan_world(),
	    m->room != NULL ? m->room->name : "", m->nick);
	if (n >= 0 && (size_t)n < len)
		m->moving = true;
	pthread_mutex_unlock(&rooms_lock);
	return n < 0 || (size_t)n >= len ? -1 : n;
}

struct entering {
	struct member	*m;
	const char	*room;
	int		 rc;
	uint64_t	 seq;
};

/* under the room's order: from the next line on, the new worker delivers */
static void
enter_at(uint64_t seq, void *arg)
{
	struct entering *e = arg;
	struct member *m = e->m;
	struct lroom *r;

	pthread_mutex_lock(&rooms_lock);
	if ((r = lroom_get(e->room, true)) == NULL) {
		pthread_mutex_unlock(&rooms_lock);
		e->rc = -1;
		return;
	}
	m->skip_upto = seq;
	m->moving = true;
	m->room = r;
	atomic_fetch_add_explicit(&scoreboard->slot[my_slot].chat_members, 1,
	    memory_order_relaxed);	/* metrics */
	m->prev = NULL;
	m->next = r->head;
	if (r->head != NULL)
		r->head->prev = m;
	r->head = m;
	pthread_mutex_unlock(&rooms_lock);
	e->seq = seq;
	e->rc = 0;
}

static int
chat_restore(struct session *s, const char *buf, size_t len, uint64_t *mark)
{
	struct member *m = session_data(s);
	char room[NAME_MAX_LEN + 1], hex[17];
	const char *sp;
	struct entering e;
	unsigned long long world;
	size_t rlen;

	*mark = 0;
	if (len < 18 || buf[16] != ' ')
		return -1;
	memcpy(hex, buf, 16);
	hex[16] = '\0';
	if (sscanf(hex, "%16llx", &world) != 1)
		return -1;
	buf += 17;
	len -= 17;
	sp = memchr(buf, ' ', len);
	if (sp == NULL || (rlen = (size_t)(sp - buf)) > NAME_MAX_LEN ||
	    (rlen > 0 && !valid_name(buf, rlen)) ||
	    !valid_name(sp + 1, len - rlen - 1))
		return -1;
	m->s = s;
	m->aside_tail = &m->aside;
	memcpy(room, buf, rlen);
	room[rlen] = '\0';
	memcpy(m->nick, sp + 1, len - rlen - 1);
	m->nick[len - rlen - 1] = '\0';
	if (rlen == 0)
		return 0;
	if (chan_adopt(room, m->nick) != CHAN_OK)
		return -1;
	e.m = m;
	e.room = room;
	e.rc = -1;
	chan_mark(room, enter_at, &e);
	if (e.rc != 0)
		return -1;
	/* never 0 (nothing to wait for); all ones: another world, send all */
	*mark = world == chan_world() ? e.seq + 1 : UINT64_MAX;
	return 0;
}

#define CATCH_UP_MS	50	/* longest the old worker waits for its ring */

static void
chat_handed(struct session *s, bool moved, uint64_t mark, char **tail, size_t *tlen)
{
	struct member *m = session_data(s);
	char room[NAME_MAX_LEN + 1] = "";
	struct aside *a;
	size_t n = 0;

	*tail = NULL;
	*tlen = 0;
	pthread_mutex_lock(&rooms_lock);
	if (m->room != NULL)
		snprintf(room, sizeof(room), "%s", m->room->name);
	pthread_mutex_unlock(&rooms_lock);
	if (!moved) {
		/* it stays: what waited is sent, and the room is ours again */
		pthread_mutex_lock(&rooms_lock);
		m->moving = false;
		aside_flush(m, 0, true);
		pthread_mutex_unlock(&rooms_lock);
		if (room[0] != '\0')
			chan_adopt(room, m->nick);
		return;
	}
	if (mark != 0 && room[0] != '\0') {
		uint64_t upto = mark - 1, end = now_ms() + CATCH_UP_MS;

		/* every line up to the mark is in our ring: deliver them first */
		while (mark != UINT64_MAX && chan_seen(room) < upto && now_ms() < end) {
			struct timespec ts = { 0, 200000 };

			nanosleep(&ts, NULL);
		}
		pthread_mutex_lock(&rooms_lock);
		for (a = m->aside; a != NULL; a = a->next)
			if (mark == UINT64_MAX || (a->seq != 0 && a->seq <= upto))
				n += a->len;
		if (n > 0 && (*tail = malloc(n)) != NULL) {
			for (a = m->aside; a != NULL; a = a->next) {
				if (mark == UINT64_MAX || (a->seq != 0 && a->seq <= upto)) {
					memcpy(*tail + *tlen, a->line, a->len);
					*tlen += a->len;
				}
			}
		}
		pthread_mutex_unlock(&rooms_lock);
	}
	/* its lines go to the new worker now */
	pthread_mutex_lock(&rooms_lock);
	if (m->room != NULL)
		atomic_fetch_sub_explicit(&scoreboard->slot[my_slot].chat_members, 1,
		    memory_order_relaxed);	/* metrics */
	lroom_remove(m);
	aside_flush(m, 0, false);
	m->moving = false;
	pthread_mutex_unlock(&rooms_lock);
}

/* the new worker: the old one's last lines, then what waited here */
static void
chat_tail(struct session *s, const char *buf, size_t len)
{
	struct member *m = session_data(s);

	pthread_mutex_lock(&rooms_lock);
	if (len > 0)
		session_send(s, buf, len);
	m->moving = false;
	aside_flush(m, 0, true);
	pthread_mutex_unlock(&rooms_lock);
}

static void
cmd_nick(struct session *s, struct member *m, const char *arg, size_t len)
{
	char old[NAME_MAX_LEN + 1];
	int rc;

	if (!valid_name(arg, len)) {
		session_reply(s, "ERR bad nick: use 1-%d letters, digits, '_', '-' or '.'",
		    NAME_MAX_LEN);
		return;
	}
	if (strcmp(arg, m->nick) == 0) {
		session_reply(s, "* you are already %s", m->nick);
		return;
	}
	if (m->room != NULL) {
		char room[NAME_MAX_LEN + 1];

		snprintf(room, sizeof(room), "%s", m->room->name);
		rc = chan_rename(room, m->nick, arg);
		if (rc != CHAN_OK) {
			session_reply(s, "ERR nick '%s' is taken in %s: choose another "
			    "with /nick NAME", arg, room);
			return;
		}
		snprintf(old, sizeof(old), "%s", m->nick);
		pthread_mutex_lock(&rooms_lock);
		snprintf(m->nick, sizeof(m->nick), "%s", arg);
		pthread_mutex_unlock(&rooms_lock);
		broadcast(m, room, "* %s is now known as %s", old, m->nick);
	} else {
		snprintf(m->nick, sizeof(m->nick), "%s", arg);
	}
	session_reply(s, "* you are now %s", m->nick);
}

static void
cmd_join(struct session *s, struct member *m, const char *arg, size_t len)
{
	char old[NAME_MAX_LEN + 1] = "";
	int rc;

	if (!valid_name(arg, len)) {
		session_reply(s, "ERR bad room name: use 1-%d letters, digits, '_', '-' or '.'",
		    NAME_MAX_LEN);
		return;
	}
	if (m->room != NULL && strcmp(m->room->name, arg) == 0) {
		session_reply(s, "* you are already in %s", arg);
		return;
	}
	if (m->room != NULL)
		snprintf(old, sizeof(old), "%s", m->room->name);
	/* check the new room first, so a refused join leaves us where we were */
	rc = chan_join(arg, m->nick);
	if (rc != CHAN_OK) {
		session_reply(s, "ERR cannot join %s: %s; %s", arg, join_error(rc),
		    join_hint(rc));
		return;
	}
	chan_leave(arg, m->nick);
	leave(m, "");
	rc = enter(m, arg);
	if (rc != CHAN_OK) {
		session_reply(s, "ERR cannot join %s: %s; %s", arg, join_error(rc),
		    join_hint(rc));
		if (old[0] != '\0' && enter(m, old) == CHAN_OK)
			session_reply(s, "* you are back in %s", old);
		return;
	}
	session_reply(s, "* you joined %s", arg);
}

/*
 * What one member sends, every other member's terminal shows, and an error
 * may quote it back: control bytes (a lone CR that overwrites the line,
 * escape sequences, NULs) become '?'.  Tabs and UTF-8 pass.
 */
static void
neutralise(char *line, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			line[i] = '?';
	}
}

static void
chat_line(struct session *s, char *line, size_t len)
{
	struct member *m = session_data(s);
	char *arg;
	size_t clen, alen;

	if (len == 0)
		return;
	neutralise(line, len);	/* messages, and the commands errors quote */
	if (line[0] != '/') {
		if (m->room == NULL) {
			session_reply(s, "ERR you are in no room: /join ROOM first");
			return;
		}
		if (len > MESSAGE_MAX) {
			session_reply(s, "ERR message too long (max %d bytes)", MESSAGE_MAX);
			return;
		}
		broadcast(m, m->room->name, "[%s] %.*s", m->nick, (int)len, line);
		return;
	}
	clen = strcspn(line, " \t");
	arg = line + clen;
	while (*arg == ' ' || *arg == '\t')
		arg++;
	alen = strlen(arg);
	while (alen > 0 && (arg[alen - 1] == ' ' || arg[alen - 1] == '\t'))
		arg[--alen] = '\0';

	if (clen == 5 && strncasecmp(line, "/nick", 5) == 0) {
		cmd_nick(s, m, arg, alen);
	} else if (clen == 5 && strncasecmp(line, "/join", 5) == 0) {
		cmd_join(s, m, arg, alen);
	} else if (clen == 4 && strncasecmp(line, "/who", 4) == 0) {
		char *buf;
		int n;

		if (m->room == NULL) {
			session_reply(s, "ERR you are in no room: /join ROOM first");
			return;
		}
		if ((buf = malloc(list_max)) == NULL)
			return;
		n = chan_who(m->room->name, buf, list_max);
		session_reply(s, "* %s (%d): %s", m->room->name, n, buf);
		free(buf);
	} else if (clen == 6 && strncasecmp(line, "/rooms", 6) == 0) {
		char *buf;
		int n;

		if ((buf = malloc(list_max)) == NULL)
			return;
		n = chan_rooms(buf, list_max);
		session_reply(s, "* rooms (%d): %s", n, buf);
		free(buf);
	} else if (clen == 5 && strncasecmp(line, "/quit", 5) == 0) {
		session_quit(s);
	} else {
		session_reply(s, "ERR unknown command '%.*s' (use /nick NAME, /join ROOM, "
		    "/who, /rooms, /quit)", (int)(clen > 32 ? 32 : clen), line);
	}
}

static int
chat_master_init(const struct fk_config *cfg, const void *vconf)
{
	const struct chat_conf *conf = vconf;
	char err[300], pw[sizeof(redis_password)] = "";

	(void)cfg;
	/* a failed reload leaves the running password to respawned workers */
	if (conf->layer == LAYER_REDIS && conf->redis_password_file[0] != '\0' &&
	    rp_read_secret(conf->redis_password_file, pw, sizeof(pw), err,
	    sizeof(err)) != 0) {
		log_warnx("chat.redis_password_file: %s", err);
		errno = EACCES;
		return -1;
	}
	if (chan_setup() != 0)
		return -1;
	memcpy(redis_password, pw, sizeof(pw));
	explicit_bzero(pw, sizeof(pw));
	return 0;
}

static int
chat_worker_init(const struct fk_config *cfg, const void *vconf, int slot)
{
	const struct chat_conf *conf = vconf;
	struct chan_limits lim = { conf->max_rooms, conf->max_members };

	my_slot = slot;
	list_max = (size_t)cfg->max_output / 4;
	if (list_max > LIST_MAX)
		list_max = LIST_MAX;
	if (conf->layer == LAYER_REDIS) {
		struct chan_redis r = {
			.address = conf->redis_address,
			.prefix = conf->redis_prefix,
			.password = redis_password,
			.lease_ms = conf->presence_lease * 1000,
			.timeout_ms = conf->redis_timeout,
			.queue = conf->redis_queue,
		};

		if (chan_use_redis(&r, notice_all) != 0) {
			log_warn("chat: cannot set up the Redis layer");
			return -1;
		}
	}
	if (chan_start(slot, &lim, deliver_remote) != 0) {
		log_warn("chat: cannot start the channel layer");
		return -1;
	}
	return 0;
}

const struct service service_chat = {
	.name = "chat",
	.settings = chat_settings,
	.conf_size = sizeof(struct chat_conf),
	.session_size = sizeof(struct member),
	.check = chat_check,
	.master_init = chat_master_init,
	.worker_init = chat_worker_init,
	.open = chat_open,
	.line = chat_line,
	.close = chat_close,
	.save = chat_save,
	.restore = chat_restore,
	.handed = chat_handed,
	.tail = chat_tail,
};
