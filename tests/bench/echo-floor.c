/*
 * echo-floor - the smallest reasonable echo server, as a floor for
 * forkd-bench comparisons: one process, one thread, one epoll loop, no
 * limits, no timeouts, no logging.
 *
 *   echo-floor -p PORT [-a ADDR] [-x PREFIX] [-b BACKLOG] [-n PROCS]
 *
 * With -n, PROCS such processes serve the port, each with its own listening
 * socket (SO_REUSEPORT, so the kernel spreads new connections over them by
 * their addresses): what the same loop does when its connections are split
 * between processes, as a prefork server's are.  All sockets listen before
 * the first child starts; SIGTERM to the first process stops them all.
 *
 * Without -x it echoes the bytes it receives exactly (like a plain echo
 * service).  With -x it answers each line (ended by "\n" or "\r\n") with
 * PREFIX, the line, and "\r\n" - forkd's echo protocol with -x "Echo: ".
 * SIGTERM or SIGINT stops it.
 *
 * Build: gcc -std=gnu11 -O2 -Wall -Wextra tests/bench/echo-floor.c -o echo-floor
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LINE	(1024 * 1024 + 512)
#define READ_CHUNK	16384

struct client {
	char	*in;		/* line mode: a partial line */
	size_t	 in_len, in_cap;
	char	*out;		/* bytes not yet written */
	size_t	 out_len, out_off, out_cap;
	int	 open;
	int	 want_out;	/* EPOLLOUT registered (reading paused) */
};

static struct client *clients;
static size_t nclients;
static const char *prefix;
static size_t plen;
static int ep;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (p == NULL) {
		fputs("echo-floor: out of memory\n", stderr);
		exit(1);
	}
	return p;
}

static struct client *client_get(int fd)
{
	size_t need = (size_t)fd + 1;

	if (need > nclients) {
		size_t n = nclients ? nclients : 1024;

		while (n < need)
			n *= 2;
		clients = xrealloc(clients, n * sizeof(*clients));
		memset(clients + nclients, 0, (n - nclients) * sizeof(*clients));
		nclients = n;
	}
	return &clients[fd];
}

static void client_close(int fd)
{
	struct client *c = &clients[fd];

	close(fd);
	free(c->in);
	free(c->out);
	memset(c, 0, sizeof(*c));
}

static void out_append(struct client *c, const char *buf, size_t len)
{
	if (c->out_off > 0 && c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + len > c->out_cap) {
		size_t n = c->out_cap ? c->out_cap : 4096;

		while (n < c->out_len + len)
			n *= 2;
		c->out = xrealloc(c->out, n);
		c->out_cap = n;
	}
	memcpy(c->out + c->out_len, buf, len);
	c->out_len += len;
}

static void set_out(int fd, struct client *c, int want)
{
	struct epoll_event ev;

	if (c->want_out == want)
		return;
	/* while output is pending, stop reading: backpressure */
	ev.events = want ? EPOLLOUT : EPOLLIN;
	ev.data.fd = fd;
	epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
	c->want_out = want;
}

/* Returns -1 when the connection must be closed. */
static int flush_out(int fd, struct client *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(fd, c->out + c->out_off, c->out_len - c->out_off,
		    MSG_NOSIGNAL);

		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			set_out(fd, c, 1);
			return 0;
		}
		return -1;
	}
	/* nothing pending: give the buffer back, an idle client costs nothing */
	free(c->out);
	c->out = NULL;
	c->out_off = c->out_len = c->out_cap = 0;
	set_out(fd, c, 0);
	return 0;
}

static int take_lines(struct client *c, const char *buf, size_t len)
{
	size_t i, start = 0;

	for (i = 0; i < len; i++) {
		const char *line;
		size_t llen;

		if (buf[i] != '\n')
			continue;
		if (c->in_len > 0) {
			if (c->in_len + (i - start) > MAX_LINE)
				return -1;
			if (c->in_len + (i - start) > c->in_cap) {
				c->in_cap = c->in_len + (i - start);
				c->in = xrealloc(c->in, c->in_cap);
			}
			memcpy(c->in + c->in_len, buf + start, i - start);
			c->in_len += i - start;
			line = c->in;
			llen = c->in_len;
		} else {
			line = buf + start;
			llen = i - start;
		}
		if (llen > 0 && line[llen - 1] == '\r')
			llen--;
		out_append(c, prefix, plen);
		out_append(c, line, llen);
		out_append(c, "\r\n", 2);
		c->in_len = 0;
		start = i + 1;
	}
	if (start < len) {
		size_t rest = len - start;

		if (c->in_len + rest > MAX_LINE)
			return -1;
		if (c->in_len + rest > c->in_cap) {
			c->in_cap = (c->in_len + rest) * 2;
			c->in = xrealloc(c->in, c->in_cap);
		}
		memcpy(c->in + c->in_len, buf + start, rest);
		c->in_len += rest;
	}
	return 0;
}

static void on_readable(int fd)
{
	static char buf[READ_CHUNK];
	struct client *c = &clients[fd];
	ssize_t n;

	for (;;) {
		n = recv(fd, buf, sizeof(buf), 0);
		if (n > 0) {
			if (prefix == NULL) {
				out_append(c, buf, (size_t)n);
			} else if (take_lines(c, buf, (size_t)n) == -1) {
				client_close(fd);
				return;
			}
			if (flush_out(fd, c) == -1) {
				client_close(fd);
				return;
			}
			if (c->want_out || (size_t)n < sizeof(buf))
				return;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		client_close(fd);
		return;
	}
}

static void on_accept(int lfd)
{
	for (;;) {
		struct epoll_event ev;
		int fd, one = 1;

		fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE)
				fprintf(stderr, "echo-floor: accept: %s\n", strerror(errno));
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		client_get(fd)->open = 1;
		ev.events = EPOLLIN;
		ev.data.fd = fd;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1)
			client_close(fd);
	}
}

static void usage(void)
{
	fputs("usage: echo-floor -p PORT [-a ADDR] [-x PREFIX] [-b BACKLOG] [-n PROCS]\n", stderr);
	exit(2);
}

static int listen_on(const struct sockaddr_in *sa, long backlog, int reuseport)
{
	int one = 1, lfd;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd == -1) {
		perror("echo-floor: socket");
		exit(1);
	}
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport &&
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) {
		perror("echo-floor: SO_REUSEPORT");
		exit(1);
	}
	if (bind(lfd, (const struct sockaddr *)sa, sizeof(*sa)) == -1 ||
	    listen(lfd, (int)backlog) == -1) {
		fprintf(stderr, "echo-floor: port %d: %s\n", ntohs(sa->sin_port),
		    strerror(errno));
		exit(1);
	}
	return lfd;
}

static int serve(int lfd)
{
	struct epoll_event ev, evs[256];
	int i, n;

	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep == -1) {
		perror("echo-floor: epoll_create1");
		return 1;
	}
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	while (!stop) {
		n = epoll_wait(ep, evs, 256, 1000);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			perror("echo-floor: epoll_wait");
			return 1;
		}
		for (i = 0; i < n; i++) {
			int fd = evs[i].data.fd;

			if (fd == lfd) {
				on_accept(lfd);
				continue;
			}
			if ((size_t)fd >= nclients || !clients[fd].open)
				continue;
			if (clients[fd].want_out) {
				if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
					client_close(fd);
					continue;
				}
				if (flush_out(fd, &clients[fd]) == -1)
					client_close(fd);
				continue;
			}
			on_readable(fd);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;
	struct rlimit rl;
	struct sigaction sig;
	const char *addr = "127.0.0.1";
	long port = 0, backlog = 4096, procs = 1;
	int lfds[64], ch, i, rc;
	pid_t kids[64];
	char *end;

	while ((ch = getopt(argc, argv, "p:a:x:b:n:h")) != -1) {
		switch (ch) {
		case 'p':
			port = strtol(optarg, &end, 10);
			if (*end != '\0' || port < 1 || port > 65535)
				usage();
			break;
		case 'a':
			addr = optarg;
			break;
		case 'x':
			prefix = optarg;
			plen = strlen(prefix);
			break;
		case 'b':
			backlog = strtol(optarg, &end, 10);
			if (*end != '\0' || backlog < 1 || backlog > 65535)
				usage();
			break;
		case 'n':
			procs = strtol(optarg, &end, 10);
			if (*end != '\0' || procs < 1 || procs > 64)
				usage();
			break;
		default:
			usage();
		}
	}
	if (port == 0 || optind != argc)
		usage();

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	memset(&sig, 0, sizeof(sig));
	sig.sa_handler = on_signal;
	sigaction(SIGTERM, &sig, NULL);
	sigaction(SIGINT, &sig, NULL);
	signal(SIGPIPE, SIG_IGN);

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "echo-floor: bad IPv4 address '%s'\n", addr);
		return 2;
	}
	for (i = 0; i < procs; i++)
		lfds[i] = listen_on(&sa, backlog, procs > 1);
	fprintf(stderr, "echo-floor: listening on %s:%ld (%s), %ld process(es)\n",
	    addr, port, prefix ? "line mode with prefix" : "plain echo", procs);
	for (i = 1; i < procs; i++) {
		kids[i] = fork();
		if (kids[i] == -1) {
			perror("echo-floor: fork");
			stop = 1;
			procs = i;
			break;
		}
		if (kids[i] == 0) {
			int k;

			/* ends with the first process, however that ends */
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if (getppid() == 1)
				return 0;
			for (k = 0; k < procs; k++)
				if (k != i)
					close(lfds[k]);
			return serve(lfds[i]);
		}
	}
	for (i = 1; i < procs; i++)
		close(lfds[i]);
	rc = stop ? 1 : serve(lfds[0]);
	for (i = 1; i < procs; i++)
		kill(kids[i], SIGTERM);
	for (i = 1; i < procs; i++)
		waitpid(kids[i], NULL, 0);
	return rc;
}
