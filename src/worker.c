/*
 * One worker process.  An acceptor thread waits on the listening sockets
 * (EPOLLEXCLUSIVE, so one connection wakes one worker) and accepts; the main
 * thread keeps house: signals, timeouts, heartbeat, and every POOL_WATCH_MS
 * a look at the pool.  A bounded pool of threads (pool.c) serves the
 * connections that have work.  Every thread blocks every signal; the main
 * thread reads them from a signalfd.
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "conn.h"
#include "iplimit.h"
#include "log.h"
#include "pool.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"
#include "worker.h"

#define POOL_STACK	(512 * 1024)
#define TICK_MS		250	/* housekeeping period */
#define SAMPLE_MS	1000	/* own CPU, memory and fds for metrics */
#define EMFILE_PAUSE_MS	100
#define EMFILE_LOG_MS	10000
#define ACCEPT_BATCH	64

#define SIT_OUT_MS	50	/* longest an acceptor sits out between checks */

/* tags for the main loop's epoll data */
#define TAG_SIGNAL	1
#define TAG_TIMER	2
#define TAG_WATCH	3
#define TAG_ACCWAKE	UINT64_MAX	/* in the acceptor's set; listeners use their index */

static struct worker W;

static void
wake_master(struct worker *w)
{
	uint64_t one = 1;

	if (write(w->master_wake, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("cannot wake the master");
}

/* An event on a client connection, in whichever pool thread got it. */
static void
serve(void *conn)
{
	conn_kick(conn);
}

/*
 * A worker at its share of max_connections stops accepting so the others
 * take the load, unless the daemon as a whole is full: then it accepts, to
 * tell the client so instead of leaving it in the kernel's queue.
 */
static bool
at_share(struct worker *w)
{
	return atomic_load(&w->nconns) >= w->share &&
	    scoreboard_conns() < w->cfg->max_connections;
}

/*
 * EPOLLEXCLUSIVE hands a new connection to the first worker in the socket's
 * wait queue that is waiting, so one idle worker would take every client of a
 * quiet period.  A worker holding clearly more connections than the least
 * busy one of its generation sits out.
 */
static bool
least_busy(struct worker *w)
{
	unsigned gen = atomic_load(&w->sb->generation);
	long mine = atomic_load(&w->nconns), least = -1;
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++) {
		const struct sb_slot *o = &scoreboard->slot[i];
		long n;

		if (i == w->slot || atomic_load(&o->state) != SLOT_READY ||
		    atomic_load(&o->generation) != gen)
			continue;
		n = atomic_load_explicit(&o->conns, memory_order_relaxed);
		if (least < 0 || n < least)
			least = n;
	}
	/* a little slack, so that workers do not trade every other client */
	return least < 0 || mine <= least + 1 + least / 8;
}

/*
 * Is another worker of this generation waiting on the listeners?  Each side
 * raises its own flag before it looks at the others', so of two workers
 * deciding at once at least one sees the other's flag and stays: counts seen
 * a moment apart (a worker whose clients just left) never make every worker
 * sit out at once.
 */
static bool
others_accept(struct worker *w)
{
	unsigned gen = atomic_load(&w->sb->generation);
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++) {
		const struct sb_slot *o = &scoreboard->slot[i];

		if (i != w->slot && atomic_load(&o->state) == SLOT_READY &&
		    atomic_load(&o->generation) == gen && !atomic_load(&o->sitting_out))
			return true;
	}
	return false;
}

/* Tell acceptors that sit out that the balance changed. */
static void
accept_news(void)
{
	atomic_fetch_add(&scoreboard->accept_seq, 1);
	if (atomic_load(&scoreboard->accept_waiters) > 0)
		syscall(SYS_futex, &scoreboard->accept_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Must this worker's acceptor stay off the listeners now? */
static bool
must_sit_out(struct worker *w, uint64_t now)
{
	return now < w->resume_ms || at_share(w);
}

/*
 * Wait until another worker accepts, or a while.  False, at once, when this
 * worker would sit out only for the balance and nobody else accepts.
 */
static bool
sit_out(struct worker *w, uint64_t now)
{
	uint32_t seen = atomic_load(&scoreboard->accept_seq);
	uint64_t ms = SIT_OUT_MS;
	struct timespec ts;

	atomic_store(&w->sb->sitting_out, 1);
	if (!must_sit_out(w, now) && !others_accept(w)) {
		atomic_store(&w->sb->sitting_out, 0);
		return false;
	}
	if (w->resume_ms > now && w->resume_ms - now < ms)
		ms = w->resume_ms - now;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)ms * 1000000L;
	atomic_fetch_add(&scoreboard->accept_waiters, 1);
	/* checked again after announcing ourselves: no wakeup can be missed */
	if (atomic_load(&w->accept_stop) || (!must_sit_out(w, now) && least_busy(w))) {
		atomic_fetch_sub(&scoreboard->accept_waiters, 1);
		atomic_store(&w->sb->sitting_out, 0);
		return true;
	}
	syscall(SYS_futex, &scoreboard->accept_seq, FUTEX_WAIT, seen, &ts, NULL, 0);
	atomic_fetch_sub(&scoreboard->accept_waiters, 1);
	atomic_store(&w->sb->sitting_out, 0);
	return true;
}

static void
reject(int fd, struct worker *w, const char *line, enum sb_refuse why)
{
	atomic_fetch_add_explicit(&w->sb->rejected, 1, memory_order_relaxed);
	sb_count(&w->sb->refused[why], 1);
	if (send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_debug("reject: %s", strerror(errno));
	close(fd);
}

/* Accept what is waiting; true when a connection was taken. */
static bool
accept_batch(struct worker *w, size_t li)
{
	bool accepted = false;
	int k;

	for (k = 0; k < ACCEPT_BATCH; k++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd;

		/* the kernel woke this worker for the first one: take it, or it
		 * would wait for the next client's wakeup to reach someone */
		if (k > 0 && (at_share(w) || !least_busy(w) || atomic_load(&w->accept_stop)))
			return accepted;
		fd = accept4(w->lfds[li], (struct sockaddr *)&ss, &len,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			uint64_t now;

			switch (errno) {
			case EAGAIN:
			case EINTR:
			case ECONNABORTED:
			case EPROTO:
				return accepted;
			case EMFILE:
			case ENFILE:
			case ENOBUFS:
			case ENOMEM:
				/* accepting again at once would only spin */
				now = now_ms();
				if (now - w->emfile_logged_ms >= EMFILE_LOG_MS ||
				    w->emfile_logged_ms == 0) {
					log_warn("cannot accept (pausing %d ms)", EMFILE_PAUSE_MS);
					w->emfile_logged_ms = now;
				}
				w->resume_ms = now + EMFILE_PAUSE_MS;
				sb_count(&w->sb->refused[REFUSE_EMFILE], 1);
				return accepted;
			default:
				log_warn("accept");
				return accepted;
			}
		}
		if ((size_t)fd >= w->conns_cap) {
			reject(fd, w, "ERR too many connections\r\n", REFUSE_EMFILE);
			continue;
		}
		/* take the place, then count: of two workers taking the last
		 * place at once, at least one sees the other's and refuses */
		atomic_fetch_add(&w->sb->conns, 1);
		if (scoreboard_conns() > w->cfg->max_connections) {
			atomic_fetch_sub(&w->sb->conns, 1);
			reject(fd, w, "ERR too many connections\r\n", REFUSE_MAX_CONNECTIONS);
			continue;
		}
		if (w->cfg->max_connections_per_ip > 0 && !iplimit_acquire(w->slot,
		    (struct sockaddr *)&ss, w->cfg->max_connections_per_ip)) {
			atomic_fetch_sub(&w->sb->conns, 1);
			reject(fd, w, "ERR too many connections\r\n", REFUSE_PER_IP);
			continue;
		}
		conn_open(w, fd, (int)li, (struct sockaddr *)&ss,
		    w->cfg->max_connections_per_ip > 0);
		accepted = true;
	}
	return accepted;
}

static void *
acceptor_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event ev[8];

	while (!atomic_load(&w->accept_stop)) {
		uint64_t now = now_ms();
		int i, n;

		if (must_sit_out(w, now) || !least_busy(w)) {
			/* not waiting on the listeners: the kernel wakes another worker */
			if (sit_out(w, now))
				continue;
		}
		n = epoll_wait(w->accfd, ev, (int)nitems(ev), 1000);
		for (i = 0; i < n; i++)
			if (ev[i].data.u64 != TAG_ACCWAKE && accept_batch(w, (size_t)ev[i].data.u64))
				accept_news();
	}
	return NULL;
}

/* Stop accepting for good: other workers and the master keep the sockets. */
static void
close_listeners(struct worker *w)
{
	uint64_t one = 1;
	size_t i;

	if (w->acceptor_running) {
		atomic_store(&w->accept_stop, true);
		accept_news();
		if (write(w->accwake, &one, sizeof(one)) < 0)
			log_warn("cannot stop the acceptor");
		pthread_join(w->acceptor, NULL);
		w->acceptor_running = false;
	}
	if (w->lfds == NULL)
		return;
	for (i = 0; i < w->cfg->nlisteners; i++)
		close(w->lfds[i]);
	w->lfds = NULL;
}

static void
start_drain(struct worker *w, bool graceful)
{
	uint64_t now = now_ms();

	if (!w->draining) {
		w->draining = true;
		close_listeners(w);
		atomic_store(&w->sb->state, SLOT_DRAINING);
		wake_master(w);
		w->drain_deadline_ms = now + (uint64_t)w->cfg->shutdown_timeout * 1000;
		log_debug("draining (%ld connection%s)", atomic_load(&w->nconns),
		    PLURAL(atomic_load(&w->nconns)));
	}
	if (!graceful) {
		w->stopping = true;
		conn_kill_all(w, KILL_SHUTDOWN);
	}
}

static void
drop_privileges(const struct worker_args *a)
{
	if (getuid() != 0 && geteuid() != 0)
		return;
	if (a->uid == (uid_t)-1)
		return;		/* allow_root: checked and logged by the master */
	if (setgroups(1, &a->gid) != 0)
		fatal("cannot drop supplementary groups: %s", strerror(errno));
	if (setgid(a->gid) != 0)
		fatal("cannot set group id %u: %s", (unsigned)a->gid, strerror(errno));
	if (setuid(a->uid) != 0)
		fatal("cannot set user id %u: %s", (unsigned)a->uid, strerror(errno));
	if (setuid(0) == 0 || geteuid() == 0 || getegid() == 0)
		fatal("privileges were not dropped");
}

static int
setup(struct worker *w, const struct worker_args *a)
{
	struct epoll_event ev;
	struct itimerspec its;
	sigset_t all, mine;
	pthread_attr_t attr;
	size_t i;
	long nofile;

	memset(w, 0, sizeof(*w));
	w->cfg = a->cfg;
	w->lfds = a->lfds;
	w->slot = a->slot;
	w->sb = &scoreboard->slot[a->slot];
	w->master = scoreboard->master_pid;
	w->master_wake = a->master_wake;
	w->share = (w->cfg->max_connections + w->cfg->workers - 1) / w->cfg->workers;
	if (w->cfg->max_requests_per_worker > 0) {
		unsigned jitter = (unsigned)w->cfg->max_requests_per_worker / 10 + 1;

		w->recycle_at = (uint64_t)w->cfg->max_requests_per_worker +
		    (uint64_t)((unsigned)getpid() * 2654435761u % jitter);
	}

	nofile = raise_nofile_limit();
	w->conns_cap = nofile > 0 ? (size_t)nofile : 1024;
	w->conns = calloc(w->conns_cap, sizeof(*w->conns));
	if (w->conns == NULL)
		return -1;

	/* every thread made from here on inherits a full mask */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGABRT);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	sigemptyset(&mine);
	sigaddset(&mine, SIGTERM);
	sigaddset(&mine, SIGINT);
	sigaddset(&mine, SIGQUIT);
	w->sigfd = signalfd(-1, &mine, SFD_CLOEXEC | SFD_NONBLOCK);
	w->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	w->watchfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	w->accwake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->loopfd = epoll_create1(EPOLL_CLOEXEC);
	w->accfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->sigfd < 0 || w->timerfd < 0 || w->watchfd < 0 || w->accwake < 0 ||
	    w->epfd < 0 || w->loopfd < 0 || w->accfd < 0)
		return -1;

	its.it_interval.tv_sec = 0;
	its.it_interval.tv_nsec = TICK_MS * 1000000L;
	its.it_value = its.it_interval;
	timerfd_settime(w->timerfd, 0, &its, NULL);

	ev.events = EPOLLIN;
	ev.data.u64 = (uint64_t)TAG_SIGNAL;
	epoll_ctl(w->loopfd, EPOLL_CTL_ADD, w->sigfd, &ev);
	ev.data.u64 = (uint64_t)TAG_TIMER;
	epoll_ctl(w->loopfd, EPOLL_CTL_ADD, w->timerfd, &ev);
	ev.data.u64 = (uint64_t)TAG_WATCH;
	epoll_ctl(w->loopfd, EPOLL_CTL_ADD, w->watchfd, &ev);
	ev.data.u64 = TAG_ACCWAKE;
	epoll_ctl(w->accfd, EPOLL_CTL_ADD, w->accwake, &ev);
	for (i = 0; i < w->cfg->nlisteners; i++) {
		ev.events = EPOLLIN | EPOLLEXCLUSIVE;
		ev.data.u64 = i;
		if (epoll_ctl(w->accfd, EPOLL_CTL_ADD, w->lfds[i], &ev) != 0)
			return -1;
	}
	for (i = 0; services[i] != NULL; i++)
		if (services[i]->worker_init != NULL && service_used(w->cfg, (int)i) &&
		    services[i]->worker_init(w->cfg, w->cfg->service_conf[i], w->slot) != 0)
			return -1;

	if (pool_start(&w->pool, w->epfd, w->cfg->threads,
	    pool_pollers(w->cfg->threads, w->cfg->workers), POOL_STACK, serve) != 0)
		return -1;
	/* spares to unpark: watch the pollers (pool.h) */
	if (pool_spares(&w->pool) > 0) {
		its.it_interval.tv_sec = 0;
		its.it_interval.tv_nsec = POOL_WATCH_MS * 1000000L;
		its.it_value = its.it_interval;
		timerfd_settime(w->watchfd, 0, &its, NULL);
	}
	w->pool_moving_ms = now_ms();
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, POOL_STACK);
	if (pthread_create(&w->acceptor, &attr, acceptor_main, w) != 0) {
		pthread_attr_destroy(&attr);
		return -1;
	}
	pthread_setname_np(w->acceptor, "forkd-accept");
	w->acceptor_running = true;
	pthread_attr_destroy(&attr);
	return 0;
}

static void
on_signal(struct worker *w)
{
	struct signalfd_siginfo si;

	while (read(w->sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGQUIT:		/* retired by a reload or a recycle */
			start_drain(w, true);
			break;
		case SIGTERM:
		case SIGINT:
			start_drain(w, false);
			break;
		}
	}
}

static void
on_watch(struct worker *w)
{
	uint64_t expirations;

	if (read(w->watchfd, &expirations, sizeof(expirations)) < 0)
		return;
	if (pool_watch(&w->pool))
		w->pool_moving_ms = now_ms();
}

static void
on_tick(struct worker *w)
{
	uint64_t expirations, now = now_ms();

	if (read(w->timerfd, &expirations, sizeof(expirations)) < 0)
		return;
	/* the heartbeat says the worker serves: its loop runs and some pool
	 * thread is not stuck (a worker whose every thread hangs is replaced) */
	if (pool_spares(&w->pool) == 0 && pool_watch(&w->pool))
		w->pool_moving_ms = now;
	atomic_store(&w->sb->heartbeat_ms, MIN(now, w->pool_moving_ms));
	if (now - w->sampled_ms >= SAMPLE_MS) {
		scoreboard_sample(&w->sb->proc);
		w->sampled_ms = now;
	}
	if (getppid() != w->master) {
		log_warnx("the master (pid %ld) is gone: stopping", (long)w->master);
		start_drain(w, false);
	}
	conn_sweep(w, now);
	if (w->recycle_at != 0 && !w->draining &&
	    atomic_load(&w->sb->served) >= w->recycle_at) {
		/* the master starts a successor, then retires us gracefully */
		w->recycle_at = 0;
		log_info("served %llu connections: asking to be replaced",
		    (unsigned long long)atomic_load(&w->sb->served));
		atomic_store(&w->sb->want_recycle, 1);
		wake_master(w);
	}
	if (w->draining && !w->stopping && now >= w->drain_deadline_ms) {
		long n = atomic_load(&w->nconns);

		log_info("shutdown_timeout passed: closing %ld connection%s", n, PLURAL(n));
		w->stopping = true;
		conn_kill_all(w, KILL_RETIRE);
	}
}

void
worker_run(const struct worker_args *a)
{
	struct worker *w = &W;

	log_set_role("worker %d", a->slot);
	drop_privileges(a);
	/* SIGTERM when the master dies, whatever the reason; set after the
	 * privileges changed, since a change of credentials clears it */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != scoreboard->master_pid)
		_exit(1);
	if (setup(w, a) != 0)
		fatal("cannot start: %s", strerror(errno));

	atomic_store(&w->sb->heartbeat_ms, now_ms());
	scoreboard_sample(&w->sb->proc);
	w->sampled_ms = now_ms();
	atomic_store(&w->sb->state, SLOT_READY);
	wake_master(w);
	log_debug("ready: %d threads, %d polling", w->pool.nthreads, w->pool.pollers);

	while (!(w->draining && atomic_load(&w->nconns) == 0)) {
		struct epoll_event ev[16];
		int i, n = epoll_wait(w->loopfd, ev, 16, -1);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait: %s", strerror(errno));
		for (i = 0; i < n; i++) {
			uint64_t tag = ev[i].data.u64;

			if (tag == TAG_SIGNAL)
				on_signal(w);
			else if (tag == TAG_TIMER)
				on_tick(w);
			else if (tag == TAG_WATCH)
				on_watch(w);
		}
	}

	/* every connection is closed: end the pool and go */
	pool_stop(&w->pool);
	log_debug("exiting: %llu connections served",
	    (unsigned long long)atomic_load(&w->sb->served));
	exit(0);
}
