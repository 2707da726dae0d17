#ifndef FORKD_LISTENER_H
#define FORKD_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/*
 * The master's listening sockets, keyed by address and port.  They live in
 * the master for the life of the daemon: a reload keeps every socket whose
 * address and port are still configured, so no connection is ever refused.
 */
struct lsock {
	struct sockaddr_storage addr;
	socklen_t	addrlen;
	int		fd;
	bool		from_systemd;
};

struct lsock_set {
	struct lsock	*v;
	size_t		 n;
};

/* Adopt sockets passed by systemd (LISTEN_FDS); -1 with err on a bad one. */
int	lsock_adopt_systemd(struct lsock_set *, char *err, size_t errlen);
/*
 * Make sure every listener of cfg has a socket in set (opening the missing
 * ones) and fill fds[i] for cfg->listeners[i].  On failure nothing that was
 * already in set is touched and what this call opened is closed again.
 */
int	lsock_bind_config(struct lsock_set *, const struct fk_config *cfg, int *fds,
	    char *err, size_t errlen);
/* Close the sockets of set that cfg no longer uses. */
void	lsock_prune(struct lsock_set *, const struct fk_config *cfg);
/* systemd sockets that match no listener of cfg: -1 with err naming one */
int	lsock_check_unmatched(const struct lsock_set *, const struct fk_config *cfg,
	    char *err, size_t errlen);
void	lsock_close_all(struct lsock_set *);
/* An upgrade passed fd like systemd does, but forkd opened it: it is
 * forkd's to re-listen and to close when no listener uses it any more. */
void	lsock_owned(struct lsock_set *, int fd);

#endif
