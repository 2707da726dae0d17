#ifndef FORKD_IPLIMIT_H
#define FORKD_IPLIMIT_H

#include <stdbool.h>
#include <sys/socket.h>

/*
 * Open connections per client address, counted across every worker, for
 * max_connections_per_ip.  A table in shared memory made by the master;
 * each worker counts in its own column, and a column belongs to one life of
 * a worker slot (an epoch), so a worker that dies takes its counts with it.
 */
int	iplimit_create(void);
/* Count one more connection from addr unless it already has limit. */
bool	iplimit_acquire(int slot, const struct sockaddr *addr, int limit);
/* Count one more whatever the limit: a connection that moved from another
 * worker, which gives its own count back. */
void	iplimit_add(int slot, const struct sockaddr *addr);
void	iplimit_release(int slot, const struct sockaddr *addr);

#endif
