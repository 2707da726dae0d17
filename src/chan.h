#ifndef FORKD_CHAN_H
#define FORKD_CHAN_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The channel layer: how a chat room's lines and its member list are shared
 * between the processes that hold its members.  chan_local.c links the
 * workers of one host through shared memory; chan_redis.c adds the other
 * hosts through Redis (pub/sub for the lines, a leased member list for
 * presence) on top of it, behind the same calls.  Rooms and nicks are plain
 * strings; nothing here knows about sessions or sockets.
 */

#include <stdint.h>

/*
 * Called, on a thread of the layer's own, for every line published to a
 * room by another process.  seq is the line's place in the order every
 * process of this host sees the room's lines in (rising; 0 for a line from
 * another host, which has no place in it).
 */
typedef void (*chan_deliver_fn)(const char *room, const char *line, size_t len,
    uint64_t seq);

struct chan_limits {
	int	max_rooms;
	int	max_members;	/* per room */
};

/* Where the other hosts are (see forkd.conf(5), chat.layer = "redis"). */
struct chan_redis {
	const char	*address;	/* "HOST:PORT" or "unix:/PATH" */
	const char	*prefix;	/* of every key and channel */
	const char	*password;	/* NULL: no AUTH */
	int		 lease_ms;	/* presence entries live this long unrefreshed */
	int		 timeout_ms;	/* connect, and the longest wait for an answer */
	int		 queue;		/* lines waiting to be published, at most */
};

/* Told to every member of this worker when the link to the other hosts
 * goes down or comes back (a whole line, "\r\n" included). */
typedef void (*chan_notice_fn)(const char *line, size_t len);

/* master, before the workers exist; idempotent */
int	chan_setup(void);
/* worker, before chan_start: link to other hosts through Redis */
int	chan_use_redis(const struct chan_redis *, chan_notice_fn);
/* worker: start receiving */
int	chan_start(int slot, const struct chan_limits *, chan_deliver_fn);

/*
 * Send a line to the room's members in the other processes.  local, when
 * not NULL, hands it to this process's members first, with the line's seq,
 * in the order the other processes will see it (called even when the line
 * cannot be sent on, with seq 0).
 */
int	chan_publish(const char *room, const char *line, size_t len,
	    chan_deliver_fn local);
/*
 * For a member that moves between processes (a handover): fn(seq, arg) runs
 * while no line of the room can be published, with the seq of the last one
 * that was; every later line has a greater one.
 */
void	chan_mark(const char *room, void (*fn)(uint64_t seq, void *arg), void *arg);
/* The seq of the last line of the room this process has delivered. */
uint64_t chan_seen(const char *room);
/* Which numbering those are: the same for every process that shares this
 * host's layer (an upgrade starts another). */
uint64_t chan_world(void);

/* Presence: nick unique within a room, counted against the limits. */
#define CHAN_OK		0
#define CHAN_TAKEN	(-1)	/* the nick is in use in that room */
#define CHAN_ROOM_FULL	(-2)	/* max_members */
#define CHAN_TOO_MANY	(-3)	/* max_rooms */
#define CHAN_FULL	(-4)	/* the presence table is full */
int	chan_join(const char *room, const char *nick);
void	chan_leave(const char *room, const char *nick);
int	chan_rename(const char *room, const char *from, const char *to);
/* A member moved here from another process of this host (a handover):
 * its nick in the room becomes this worker's without being released (taken
 * again if its entry was lost on the way). */
int	chan_adopt(const char *room, const char *nick);
/* "a, b, c" into buf; returns the member count */
int	chan_who(const char *room, char *buf, size_t len);
/* "lobby (3), dev (1)" into buf; returns the room count */
int	chan_rooms(char *buf, size_t len);
/* a fresh number for a default nick */
unsigned chan_next_guest(void);

/* The link to the other hosts, for the whole host (master, stats). */
#define CHAN_LINK_NONE	0	/* the local layer: no other hosts */
#define CHAN_LINK_DOWN	1	/* some worker cannot reach Redis */
#define CHAN_LINK_UP	2
int	chan_link(void);
/*
 * Would a presence call (chan_join, chan_rename, chan_who, chan_rooms) wait
 * for another server now?  Then a caller on a pool thread hands it to
 * session_offload instead of making it in place.
 */
bool	chan_may_wait(void);
struct chan_counters {
	unsigned long long	published;	/* lines sent to other hosts */
	unsigned long long	received;	/* lines from other hosts */
	unsigned long long	lost;		/* not sent: the queue was full */
	unsigned long long	links;		/* times a worker (re)connected */
};
void	chan_counters(struct chan_counters *);

#endif
