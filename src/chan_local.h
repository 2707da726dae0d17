/*
 * The local channel layer's own calls (chan_local.c), under the public ones
 * of chan.h: the Redis layer (chan_redis.c) keeps this host's rooms and
 * members in it and adds the other hosts on top.
 */
#ifndef FORKD_CHAN_LOCAL_H
#define FORKD_CHAN_LOCAL_H

#include "chan.h"

int	 chan_local_setup(void);
int	 chan_local_start(int slot, const struct chan_limits *, chan_deliver_fn);
int	 chan_local_publish(const char *room, const char *line, size_t len);
int	 chan_local_join(const char *room, const char *nick);
void	 chan_local_leave(const char *room, const char *nick);
int	 chan_local_rename(const char *room, const char *from, const char *to);
int	 chan_local_who(const char *room, char *buf, size_t len);
int	 chan_local_rooms(char *buf, size_t len);
unsigned chan_local_next_guest(void);
/* Every member this worker holds: fn(room, nick, arg) for each; the count. */
int	 chan_local_own(void (*fn)(const char *, const char *, void *), void *arg);

#endif
