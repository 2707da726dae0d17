#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "listener.h"
#include "util.h"

static bool
same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;

		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;

		return x->sin6_port == y->sin6_port &&
		    memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

static struct lsock *
find(const struct lsock_set *set, const struct sockaddr_storage *addr)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		if (same_addr(&set->v[i].addr, addr))
			return &set->v[i];
	return NULL;
}

static int
add(struct lsock_set *set, const struct sockaddr_storage *addr, socklen_t len, int fd,
    bool from_systemd)
{
	struct lsock *v = realloc(set->v, (set->n + 1) * sizeof(*v));

	if (v == NULL)
		return -1;
	set->v = v;
	v[set->n].addr = *addr;
	v[set->n].addrlen = len;
	v[set->n].fd = fd;
	v[set->n].from_systemd = from_systemd;
	set->n++;
	return 0;
}

int
lsock_adopt_systemd(struct lsock_set *set, char *err, size_t errlen)
{
	int n, fd;

	n = sd_listen_fds(1);
	if (n < 0) {
		snprintf(err, errlen, "cannot use the sockets passed by systemd: %s",
		    strerror(-n));
		return -1;
	}
	for (fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		char at[64];

		if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0 ||
		    getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
			snprintf(err, errlen, "socket passed by systemd as fd %d is not a "
			    "listening TCP socket", fd);
			return -1;
		}
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		/* systemd passes blocking sockets; the acceptors must never wait
		 * in accept() on one while another listener has clients */
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		if (find(set, &ss) != NULL) {
			snprintf(err, errlen, "systemd passed %s twice",
			    sockaddr_text((struct sockaddr *)&ss, at, sizeof(at)));
			return -1;
		}
		if (add(set, &ss, len, fd, true) != 0) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	return n;
}

int
lsock_check_unmatched(const struct lsock_set *set, const struct fk_config *cfg,
    char *err, size_t errlen)
{
	size_t i, k;

	for (i = 0; i < set->n; i++) {
		bool used = false;
		char at[64];

		for (k = 0; k < cfg->nlisteners && !used; k++)
			used = same_addr(&set->v[i].addr, &cfg->listeners[k].addr);
		if (!used && set->v[i].from_systemd) {
			snprintf(err, errlen, "socket passed by systemd (fd %d, %s) matches no "
			    "listener in %s; add it to 'listeners' or remove it from the socket unit",
			    set->v[i].fd, sockaddr_text((const struct sockaddr *)&set->v[i].addr,
			    at, sizeof(at)), cfg->path);
			return -1;
		}
	}
	return 0;
}

static int
open_one(const struct fk_listener *l, int backlog, const char *path, char *err,
    size_t errlen)
{
	char at[64];
	int fd, one = 1;

	sockaddr_text((const struct sockaddr *)&l->addr, at, sizeof(at));
	fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open a socket for %s: %s", at, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* "::" must not take the IPv4 port too: 0.0.0.0 may be its own listener */
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) != 0) {
		snprintf(err, errlen, "%s:%d: cannot listen on %s: %s", path, l->line, at,
		    strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, backlog) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", at, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int
lsock_bind_config(struct lsock_set *set, const struct fk_config *cfg, int *fds,
    char *err, size_t errlen)
{
	size_t i, before = set->n;

	for (i = 0; i < cfg->nlisteners; i++) {
		const struct fk_listener *l = &cfg->listeners[i];
		struct lsock *s = find(set, &l->addr);
		int fd;

		if (s != NULL) {
			/* kept across a reload: only the backlog may have changed */
			if (!s->from_systemd)
				listen(s->fd, cfg->backlog);
			fds[i] = s->fd;
			continue;
		}
		fd = open_one(l, cfg->backlog, cfg->path, err, errlen);
		if (fd < 0)
			goto fail;
		if (add(set, &l->addr, l->addrlen, fd, false) != 0) {
			close(fd);
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		fds[i] = fd;
	}
	return 0;
fail:
	while (set->n > before)
		close(set->v[--set->n].fd);
	return -1;
}

void
lsock_prune(struct lsock_set *set, const struct fk_config *cfg)
{
	size_t i = 0, k;

	while (i < set->n) {
		bool used = false;

		for (k = 0; k < cfg->nlisteners && !used; k++)
			used = same_addr(&set->v[i].addr, &cfg->listeners[k].addr);
		if (used) {
			i++;
			continue;
		}
		close(set->v[i].fd);
		set->v[i] = set->v[--set->n];
	}
}

void
lsock_close_all(struct lsock_set *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		close(set->v[i].fd);
	free(set->v);
	set->v = NULL;
	set->n = 0;
}

void
lsock_owned(struct lsock_set *set, int fd)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		if (set->v[i].fd == fd)
			set->v[i].from_systemd = false;
}
