#ifndef FORKD_CHAN_H
#define FORKD_CHAN_H

#include <stddef.h>

/*
 * The channel layer: how a chat room's lines and its member list are shared
 * between the processes that hold its members.  Today's implementation
 * (chan_local.c) links the workers of one host; another (Redis pub/sub,
 * between hosts) can take its place behind the same calls.  Rooms and nicks
 * are plain strings; nothing here knows about sessions or sockets.
 */

/* Called, on a thread of the layer's own, for every line published to a
 * room by another process. */
typedef void (*chan_deliver_fn)(const char *room, const char *line, size_t len);

struct chan_limits {
	int	max_rooms;
	int	max_members;	/* per room */
};

/* master, before the workers exist; idempotent */
int	chan_setup(void);
/* worker: start receiving */
int	chan_start(int slot, const struct chan_limits *, chan_deliver_fn);

/* Send a line to the room's members in the other processes. */
int	chan_publish(const char *room, const char *line, size_t len);

/* Presence: nick unique within a room, counted against the limits. */
#define CHAN_OK		0
#define CHAN_TAKEN	(-1)	/* the nick is in use in that room */
#define CHAN_ROOM_FULL	(-2)	/* max_members */
#define CHAN_TOO_MANY	(-3)	/* max_rooms */
#define CHAN_FULL	(-4)	/* the presence table is full */
int	chan_join(const char *room, const char *nick);
void	chan_leave(const char *room, const char *nick);
int	chan_rename(const char *room, const char *from, const char *to);
/* "a, b, c" into buf; returns the member count */
int	chan_who(const char *room, char *buf, size_t len);
/* "lobby (3), dev (1)" into buf; returns the room count */
int	chan_rooms(char *buf, size_t len);
/* a fresh number for a default nick */
unsigned chan_next_guest(void);

#endif
