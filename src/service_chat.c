/*
 * chat: rooms of clients.  A line from a member reaches every other member
 * of its room as "[nick] text", whichever worker holds them: members of this
 * worker directly, the others through the channel layer (chan.h).
 *
 * What happens in a room travels as an event (chat_event.h) and is rendered
 * where it is delivered, once per form and delivery: a text line for members
 * that speak text, a JSON object for members that speak JSON (browsers and
 * WebSocket programs; the `format` setting).  Replies to one member take its
 * form too.  The service never sees the protocol: `format = "auto"` only
 * asks whether the listener speaks WebSocket.
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

#include <jansson.h>

#include "chan.h"
#include "chat_event.h"
#include "chat_page.h"
#include "codec.h"
#include "config.h"
#include "log.h"
#include "redis_proto.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"

#define NAME_MAX_LEN	CHAT_NAME_MAX
#define LIST_MAX	65536	/* bytes of a /who or /rooms reply */
#define MESSAGE_MAX	60000	/* bytes of one chat line */
#define ROOM_BUCKETS	256

/*
 * A /who or /rooms reply gets at most a quarter of the session's output
 * limit, so that the reply itself never makes a reading client look too
 * slow (the longest list is cut with "...", the count stays whole).
 */
static size_t	 list_max = LIST_MAX;

enum chat_format { FORMAT_AUTO, FORMAT_TEXT, FORMAT_JSON };
static const char *const format_names[] = { "auto", "text", "json", NULL };

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
	int	 format;		/* enum chat_format */
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
	{ "format", SET_ENUM, offsetof(struct chat_conf, format), 0, 0, FORMAT_AUTO,
	    NULL, format_names },
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
	bool		 json;		/* speaks JSON, not text lines */
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

/* One form of an event, rendered when the first member needs it. */
struct rendering {
	char	*buf;
	size_t	 len;
	bool	 tried;
};

static const struct rendering *
render(struct rendering *r, const struct chat_event *ev, const char *room, bool json)
{
	if (!r->tried) {
		r->tried = true;
		r->buf = json ? chat_event_json(ev, room, &r->len) :
		    chat_event_text(ev, room, &r->len);
	}
	return r;
}

/*
 * Hand an event to the local members of a room, except its sender.  A
 * sender that speaks JSON gets its own messages back, as a Channels room
 * does: a page shows its lines in the order the room has them.
 */
static void
deliver_local(const char *room, const char *bytes, size_t len, uint64_t seq,
    const struct member *from)
{
	struct rendering forms[2] = { { NULL, 0, false }, { NULL, 0, false } };
	struct chat_event ev;
	struct lroom *r;
	struct member *m;

	chat_event_decode(bytes, len, &ev);
	pthread_mutex_lock(&rooms_lock);
	r = lroom_get(room, false);
	for (m = r != NULL ? r->head : NULL; m != NULL; m = m->next) {
		const struct rendering *f;

		if (m == from && !(m->json && ev.kind == CHAT_MESSAGE))
			continue;
		f = render(&forms[m->json], &ev, room, m->json);
		if (f->buf != NULL)
			deliver_to(m, f->buf, f->len, seq);
	}
	pthread_mutex_unlock(&rooms_lock);
	free(forms[0].buf);
	free(forms[1].buf);
}

/* from the channel layer: events published by other workers */
static void
deliver_remote(const char *room, const char *bytes, size_t len, uint64_t seq)
{
	deliver_local(room, bytes, len, seq, NULL);
}

/* the sender's own worker: its members hear it in the room's order */
static __thread const struct member *sender;

static void
deliver_own(const char *room, const char *bytes, size_t len, uint64_t seq)
{
	deliver_local(room, bytes, len, seq, sender);
}

/*
 * From the channel layer: news for everyone (the link to other hosts), as
 * a text line.  Each room gets it in each form once.
 */
static void
notice_all(const char *line, size_t len)
{
	struct chat_event ev;
	struct lroom *r;
	struct member *m;
	int i;

	chat_event_decode(line, len, &ev);
	pthread_mutex_lock(&rooms_lock);
	for (i = 0; i < ROOM_BUCKETS; i++) {
		for (r = buckets[i]; r != NULL; r = r->next) {
			struct rendering forms[2] = { { NULL, 0, false }, { NULL, 0, false } };

			for (m = r->head; m != NULL; m = m->next) {
				const struct rendering *f = render(&forms[m->json], &ev, r->name,
				    m->json);

				if (f->buf != NULL)
					deliver_to(m, f->buf, f->len, 0);
			}
			free(forms[0].buf);
			free(forms[1].buf);
		}
	}
	pthread_mutex_unlock(&rooms_lock);
}

/* An event in a room: to this worker's members, then to everyone else's. */
static void
broadcast(struct member *from, const char *room, enum chat_kind kind, const char *nick,
    const char *text, size_t text_len)
{
	char buf[CHAT_EVENT_OVERHEAD + NAME_MAX_LEN + MESSAGE_MAX];
	struct chat_event ev = { kind, nick, text, text_len };
	size_t n = chat_event_encode(buf, sizeof(buf), &ev);

	if (n == 0)
		return;
	sender = from;
	chan_publish(room, buf, n, deliver_own);
	sender = NULL;
}

/* ---- replies to one member, in its form ---- */

/* A JSON object as one reply line; the reference is dropped. */
static void
send_json(struct session *s, json_t *o)
{
	size_t n;
	char *buf;

	if (o == NULL)
		return;
	n = json_dumpb(o, NULL, 0, JSON_COMPACT);
	if (n > 0 && (buf = malloc(n + 2)) != NULL) {
		json_dumpb(o, buf, n, JSON_COMPACT);
		buf[n] = '\r';
		buf[n + 1] = '\n';
		session_send(s, buf, n + 2);
		free(buf);
	}
	json_decref(o);
}

/* A string for JSON from any bytes (quoted requests may not be UTF-8). */
static json_t *
jtext(const char *text)
{
	size_t n = strlen(text);
	char *clean = malloc(n + 1);
	json_t *j;

	if (clean == NULL)
		return NULL;
	chat_utf8_clean(clean, text, n);
	j = json_stringn_nocheck(clean, n);
	free(clean);
	return j;
}

static json_t *
jroom(const struct member *m)
{
	return m->room != NULL ? json_string(m->room->name) : json_null();
}

/* "ERR what" or {"error": "what"} */
static void __attribute__((format(printf, 3, 4)))
say_error(struct session *s, const struct member *m, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (m->json)
		send_json(s, json_pack("{s:o*}", "error", jtext(msg)));
	else
		session_reply(s, "ERR %s", msg);
}

/* "* what" or {"event": "info", "text": "what"} */
static void __attribute__((format(printf, 3, 4)))
say_info(struct session *s, const struct member *m, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (m->json)
		send_json(s, json_pack("{s:s, s:o*}", "event", "info", "text", jtext(msg)));
	else
		session_reply(s, "* %s", msg);
}

/* The member's own nick or room changed: "* what", or {"event": "you",
 * "nick": .., "room": .., "text": "what"} so a page can show both. */
static void __attribute__((format(printf, 3, 4)))
say_you(struct session *s, const struct member *m, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (m->json)
		send_json(s, json_pack("{s:s, s:s, s:o*, s:o*}", "event", "you", "nick",
		    m->nick, "room", jroom(m), "text", jtext(msg)));
	else
		session_reply(s, "* %s", msg);
}

static bool
valid_name(const char *s, size_t len)
{
	return chat_valid_name(s, len);
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
	broadcast(m, room, CHAT_JOIN, m->nick, "", 0);
	return CHAN_OK;
}

/* Enter a room: the shared member list first, then the local one. */
static int
enter(struct member *m, const char *room)
{
	int rc = chan_join(room, m->nick);

	return rc != CHAN_OK ? rc : enter_local(m, room);
}

/* Leave the room, if any; why (may be "") is told to the room. */
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
	broadcast(m, room, CHAT_LEAVE, m->nick, why, strlen(why));
}

/* The commands, for /help and the welcome. */
static const struct {
	const char	*usage;
	const char	*help;
} command_help[] = {
	{ "/nick NAME", "change your nick" },
	{ "/join ROOM", "leave this room for another (made when it does not exist)" },
	{ "/who", "who is in this room" },
	{ "/rooms", "the rooms and how many are in each" },
	{ "/help", "this list" },
	{ "/quit", "leave the chat" },
};

/*
 * The room a client asks for when it connects: the path of its request
 * ("/websock1/" is websock1), the default room when the protocol has no
 * request or the path is "/".  NULL and *bad set when the path names no
 * valid room.
 */
static const char *
first_room(struct session *s, const struct chat_conf *conf, char *buf, size_t len,
    bool *bad)
{
	const char *res = session_resource(s), *end;

	*bad = false;
	if (res == NULL)
		return conf->default_room;
	while (*res == '/')
		res++;
	end = res + strlen(res);
	while (end > res && end[-1] == '/')
		end--;
	if (end == res)
		return conf->default_room;
	if (!valid_name(res, (size_t)(end - res)) || (size_t)(end - res) >= len) {
		*bad = true;
		return NULL;
	}
	memcpy(buf, res, (size_t)(end - res));
	buf[end - res] = '\0';
	return buf;
}

static bool
speaks_json(struct session *s, const struct chat_conf *conf)
{
	const struct fk_listener *l = session_listener(s);

	switch (conf->format) {
	case FORMAT_TEXT:	return false;
	case FORMAT_JSON:	return true;
	default:		return l != NULL && l->protocol == PROTO_WEBSOCKET;
	}
}

static void
welcome(struct session *s, const struct member *m, const char *room, const char *why)
{
	json_t *o, *cmds;
	size_t i;

	if (!m->json) {
		if (why != NULL)
			session_reply(s, "* welcome to forkd chat: you are %s, in no room "
			    "(%s: %s)", m->nick, room, why);
		else
			session_reply(s, "* welcome to forkd chat: you are %s in room %s",
			    m->nick, room);
		session_reply(s, "* commands: /nick NAME, /join ROOM, /who, /rooms, /quit");
		return;
	}
	if ((cmds = json_array()) == NULL)
		return;
	for (i = 0; i < sizeof(command_help) / sizeof(command_help[0]); i++)
		json_array_append_new(cmds, json_string(command_help[i].usage));
	o = json_pack("{s:s, s:s, s:o, s:o}", "event", "welcome", "nick", m->nick,
	    "room", why == NULL ? json_string(room) : json_null(), "commands", cmds);
	if (o != NULL && why != NULL)
		json_object_set_new(o, "error", jtext(why));
	send_json(s, o);
}

/* Into the first room: its presence check may wait (see run_command). */
static void
open_room(struct session *s, void *arg)
{
	const struct chat_conf *conf = session_conf(s);
	struct member *m = session_data(s);
	char buf[NAME_MAX_LEN + 1];
	const char *room;
	bool bad;
	int rc;

	(void)arg;
	room = first_room(s, conf, buf, sizeof(buf), &bad);
	if (bad) {
		/* the greeting is queued before the room can send us anything */
		welcome(s, m, session_resource(s), "bad room name in the request path");
		return;
	}
	rc = chan_join(room, m->nick);
	welcome(s, m, room, rc != CHAN_OK ? join_error(rc) : NULL);
	if (rc == CHAN_OK)
		enter_local(m, room);
}

static void
chat_open(struct session *s)
{
	const struct chat_conf *conf = session_conf(s);
	struct member *m = session_data(s);

	m->s = s;
	m->json = speaks_json(s, conf);
	snprintf(m->nick, sizeof(m->nick), "guest%u", chan_next_guest());
	if (chan_may_wait() && session_offload(s, open_room, NULL))
		return;
	open_room(s, NULL);
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
 * Handover.  The state is "WORLD FORM ROOM NICK" (FORM 1 for JSON, ROOM ""
 * for none): what the member is to everyone else, and the form its client
 * reads (kept: a reload that changes chat.format does not change it under
 * a client).  Its presence entry is taken over, never released, so
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
	n = snprintf(buf, len, "%016llx %d %s %s", (unsigned long long)chan_world(),
	    m->json ? 1 : 0, m->room != NULL ? m->room->name : "", m->nick);
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
	if (len < 20 || buf[16] != ' ' || (buf[17] != '0' && buf[17] != '1') ||
	    buf[18] != ' ')
		return -1;
	memcpy(hex, buf, 16);
	hex[16] = '\0';
	if (sscanf(hex, "%16llx", &world) != 1)
		return -1;
	m->json = buf[17] == '1';
	buf += 19;
	len -= 19;
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

#define CATCH_UP_MS	1000	/* longest the old worker waits for its ring */

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
		while (mark != UINT64_MAX && chan_seen(room) < upto) {
			struct timespec ts = { 0, 200000 };

			if (now_ms() >= end) {
				log_warnx("chat: %s: the room's lines up to %llu did not come "
				    "in %d ms: some may be missing", m->nick,
				    (unsigned long long)upto, CATCH_UP_MS);
				break;
			}
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
		say_error(s, m, "bad nick: use 1-%d letters, digits, '_', '-' or '.'",
		    NAME_MAX_LEN);
		return;
	}
	if (strcmp(arg, m->nick) == 0) {
		say_info(s, m, "you are already %s", m->nick);
		return;
	}
	if (m->room != NULL) {
		char room[NAME_MAX_LEN + 1];

		snprintf(room, sizeof(room), "%s", m->room->name);
		rc = chan_rename(room, m->nick, arg);
		if (rc != CHAN_OK) {
			say_error(s, m, "nick '%s' is taken in %s: choose another "
			    "with /nick NAME", arg, room);
			return;
		}
		snprintf(old, sizeof(old), "%s", m->nick);
		pthread_mutex_lock(&rooms_lock);
		snprintf(m->nick, sizeof(m->nick), "%s", arg);
		pthread_mutex_unlock(&rooms_lock);
		broadcast(m, room, CHAT_NICK, old, m->nick, strlen(m->nick));
	} else {
		snprintf(m->nick, sizeof(m->nick), "%s", arg);
	}
	say_you(s, m, "you are now %s", m->nick);
}

static void
cmd_join(struct session *s, struct member *m, const char *arg, size_t len)
{
	char old[NAME_MAX_LEN + 1] = "";
	int rc;

	if (!valid_name(arg, len)) {
		say_error(s, m, "bad room name: use 1-%d letters, digits, '_', '-' or '.'",
		    NAME_MAX_LEN);
		return;
	}
	if (m->room != NULL && strcmp(m->room->name, arg) == 0) {
		say_info(s, m, "you are already in %s", arg);
		return;
	}
	if (m->room != NULL)
		snprintf(old, sizeof(old), "%s", m->room->name);
	/* check the new room first, so a refused join leaves us where we were */
	rc = chan_join(arg, m->nick);
	if (rc != CHAN_OK) {
		say_error(s, m, "cannot join %s: %s; %s", arg, join_error(rc),
		    join_hint(rc));
		return;
	}
	chan_leave(arg, m->nick);
	leave(m, "");
	rc = enter(m, arg);
	if (rc != CHAN_OK) {
		say_error(s, m, "cannot join %s: %s; %s", arg, join_error(rc),
		    join_hint(rc));
		if (old[0] != '\0' && enter(m, old) == CHAN_OK)
			say_you(s, m, "you are back in %s", old);
		return;
	}
	say_you(s, m, "you joined %s", arg);
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

/* "a, b, ..." from chan_who/chan_rooms as a JSON array; *more when cut */
static json_t *
split_list(const char *list, bool *more)
{
	json_t *a = json_array();
	const char *p = list;

	*more = false;
	while (a != NULL && *p != '\0') {
		size_t n = strcspn(p, ",");

		if (n == 3 && strncmp(p, "...", 3) == 0)
			*more = true;
		else
			json_array_append_new(a, json_stringn(p, n));
		p += n;
		while (*p == ',' || *p == ' ')
			p++;
	}
	return a;
}

static void
cmd_who(struct session *s, struct member *m, const char *arg, size_t len)
{
	json_t *members;
	char *buf;
	bool more;
	int n;

	(void)arg;
	(void)len;
	if (m->room == NULL) {
		say_error(s, m, "you are in no room: /join ROOM first");
		return;
	}
	if ((buf = malloc(list_max)) == NULL)
		return;
	n = chan_who(m->room->name, buf, list_max);
	if (!m->json) {
		session_reply(s, "* %s (%d): %s", m->room->name, n, buf);
	} else if ((members = split_list(buf, &more)) != NULL) {
		send_json(s, json_pack("{s:s, s:s, s:i, s:o, s:b}", "event", "who",
		    "room", m->room->name, "count", n, "members", members, "more", more));
	}
	free(buf);
}

static void
cmd_rooms(struct session *s, struct member *m, const char *arg, size_t len)
{
	json_t *list, *rooms;
	char *buf;
	bool more;
	size_t i;
	int n;

	(void)arg;
	(void)len;
	if ((buf = malloc(list_max)) == NULL)
		return;
	n = chan_rooms(buf, list_max);
	if (!m->json) {
		session_reply(s, "* rooms (%d): %s", n, buf);
		free(buf);
		return;
	}
	/* "lobby (3)" -> {"room": "lobby", "members": 3} */
	list = split_list(buf, &more);
	rooms = json_array();
	for (i = 0; list != NULL && rooms != NULL && i < json_array_size(list); i++) {
		const char *item = json_string_value(json_array_get(list, i));
		const char *paren = strstr(item, " (");

		if (paren == NULL)
			continue;
		json_array_append_new(rooms, json_pack("{s:s#, s:i}", "room", item,
		    (int)(paren - item), "members", atoi(paren + 2)));
	}
	json_decref(list);
	if (rooms != NULL)
		send_json(s, json_pack("{s:s, s:i, s:o, s:b}", "event", "rooms", "count", n,
		    "rooms", rooms, "more", more));
	free(buf);
}

static void
cmd_help(struct session *s, struct member *m, const char *arg, size_t len)
{
	json_t *list;
	size_t i, n = sizeof(command_help) / sizeof(command_help[0]);

	(void)arg;
	(void)len;
	if (!m->json) {
		session_reply(s, "* commands:");
		for (i = 0; i < n; i++)
			session_reply(s, "*   %-11s %s", command_help[i].usage,
			    command_help[i].help);
		session_reply(s, "* anything else you type is said to the room");
		return;
	}
	if ((list = json_array()) == NULL)
		return;
	for (i = 0; i < n; i++)
		json_array_append_new(list, json_pack("{s:s, s:s}", "command",
		    command_help[i].usage, "help", command_help[i].help));
	send_json(s, json_pack("{s:s, s:o}", "event", "help", "commands", list));
}

static void
cmd_quit(struct session *s, struct member *m, const char *arg, size_t len)
{
	(void)m;
	(void)arg;
	(void)len;
	session_quit(s);
}

typedef void cmd_fn(struct session *, struct member *, const char *, size_t);

static const struct {
	const char	*name;
	cmd_fn		*fn;
	bool		 presence;	/* asks the channel layer, which may wait */
} commands[] = {
	{ "/nick", cmd_nick, true },
	{ "/join", cmd_join, true },
	{ "/who", cmd_who, true },
	{ "/rooms", cmd_rooms, true },
	{ "/help", cmd_help, false },
	{ "/quit", cmd_quit, false },
};

/*
 * With the Redis layer, a presence command waits for Redis: it runs on the
 * worker's offload thread (session_offload), never on a pool thread, and
 * the member's next request waits for it, so answers keep their order.
 */
struct deferred {
	cmd_fn		*fn;
	size_t		 len;
	char		 arg[];
};

static void
run_deferred(struct session *s, void *arg)
{
	struct deferred *d = arg;

	d->fn(s, session_data(s), d->arg, d->len);
	free(d);
}

static void
run_command(struct session *s, struct member *m, cmd_fn *fn, bool presence,
    const char *arg, size_t len)
{
	struct deferred *d;

	if (presence && chan_may_wait() &&
	    (d = malloc(sizeof(*d) + len + 1)) != NULL) {
		d->fn = fn;
		d->len = len;
		memcpy(d->arg, arg, len);
		d->arg[len] = '\0';
		if (session_offload(s, run_deferred, d))
			return;
		free(d);
	}
	fn(s, m, arg, len);
}

/* A message to the member's room (already neutralised). */
static void
say(struct session *s, struct member *m, const char *text, size_t len)
{
	if (m->room == NULL) {
		say_error(s, m, "you are in no room: /join ROOM first");
		return;
	}
	if (len > MESSAGE_MAX) {
		say_error(s, m, "message too long (max %d bytes)", MESSAGE_MAX);
		return;
	}
	broadcast(m, m->room->name, CHAT_MESSAGE, m->nick, text, len);
}

/* A command line: "/name arg". */
static void
command(struct session *s, struct member *m, char *line)
{
	char *arg;
	size_t clen, alen, i;

	clen = strcspn(line, " \t");
	arg = line + clen;
	while (*arg == ' ' || *arg == '\t')
		arg++;
	alen = strlen(arg);
	while (alen > 0 && (arg[alen - 1] == ' ' || arg[alen - 1] == '\t'))
		arg[--alen] = '\0';
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strlen(commands[i].name) == clen &&
		    strncasecmp(line, commands[i].name, clen) == 0) {
			run_command(s, m, commands[i].fn, commands[i].presence, arg, alen);
			return;
		}
	}
	say_error(s, m, "unknown command '%.*s' (use /nick NAME, /join ROOM, "
	    "/who, /rooms, /quit)", (int)(clen > 32 ? 32 : clen), line);
}

/* A member that speaks JSON: {"message": ..}, {"command": .., "arg": ..},
 * or plain text as a text member sends it.  Control bytes are neutralised
 * in what the request asks for (JSON may hold line ends between its
 * tokens and escaped ones in its strings). */
static void
json_request(struct session *s, struct member *m, char *line, size_t len)
{
	char *out;
	size_t olen;

	switch (chat_json_input(line, len, &out, &olen)) {
	case CHAT_IN_LINE:
		neutralise(line, len);
		if (line[0] == '/')
			command(s, m, line);
		else
			say(s, m, line, len);
		return;
	case CHAT_IN_MESSAGE:
		if (out != NULL && olen > 0) {
			neutralise(out, olen);
			say(s, m, out, olen);
		}
		break;
	case CHAT_IN_COMMAND:
		if (out != NULL) {
			neutralise(out, olen);
			command(s, m, out);
		}
		break;
	case CHAT_IN_ERROR:
		say_error(s, m, "%s", out != NULL ? out : "bad request");
		break;
	}
	free(out);
}

static void
chat_line(struct session *s, char *line, size_t len)
{
	struct member *m = session_data(s);

	if (len == 0)
		return;
	if (m->json) {
		json_request(s, m, line, len);
		return;
	}
	neutralise(line, len);	/* messages, and the commands errors quote */
	if (line[0] == '/')
		command(s, m, line);
	else
		say(s, m, line, len);
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
	.http = chat_page_http,
};
