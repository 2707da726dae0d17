#ifndef FORKD_POOL_H
#define FORKD_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A bounded pool of threads serving the events of one epoll set.
 *
 * Of the pool's threads only a few wait in epoll_wait at a time (the
 * pollers); each serves the batch of events it got itself, so a ready
 * connection is never handed from one thread to another.  The rest are
 * parked.  Many threads waiting on one epoll set would each be woken for a
 * single event, a context switch per request; a few pollers take events in
 * batches.  pool_watch(), called every POOL_WATCH_MS from another thread,
 * notices a poller that has spent that long in one batch (a slow handler,
 * a descheduled thread) and unparks a spare, so that the other connections
 * keep being served; the pool gives the extra place back when a poller
 * comes back from its batch.
 */
#define POOL_WATCH_MS	10

struct pool_thread {
	struct pool		*pool;
	pthread_t		 tid;
	_Atomic uint64_t	 batches;	/* bumped as a batch starts */
	_Atomic bool		 busy;		/* serving a batch */
	uint64_t		 seen;		/* pool_watch's last look */
	uint64_t		 lent_for;	/* the batch a place was lent for */
} __attribute__((aligned(64)));

struct pool {
	int			 epfd;
	int			 stopfd;	/* eventfd: set when the pool ends */
	void			(*serve)(void *);
	int			 nthreads;
	int			 pollers;	/* places in epoll_wait */
	struct pool_thread	*t;
	_Atomic uint32_t	 places;	/* free places; a futex word */
	_Atomic int		 parked;
	_Atomic int		 lent;		/* extra places to take back */
	_Atomic bool		 stop;
	_Atomic uint64_t	 lends;		/* how often a place was lent */
};

/*
 * Start nthreads threads (stack bytes each) serving epfd, at most pollers of
 * them waiting for events at once; serve(ptr) gets each event's data.ptr.
 * 0, or -1 with errno (threads already started are stopped again).
 */
int	pool_start(struct pool *, int epfd, int nthreads, int pollers,
	    size_t stack, void (*serve)(void *));
/*
 * Lend a place for every thread stuck in one batch since the last call.
 * False when every thread is stuck: the pool serves nobody.
 */
bool	pool_watch(struct pool *);
/* End every thread and wait for them. */
void	pool_stop(struct pool *);
/* Threads that are not pollers: parked until pool_watch lends a place. */
static inline int
pool_spares(const struct pool *p)
{
	return p->nthreads - p->pollers;
}
/* How many pollers for this many threads per worker on this machine. */
int	pool_pollers(int threads, int workers);

#endif
