/*
 * The pool threads of a worker: a few pollers serve what epoll reports, the
 * other threads are parked until a poller gets stuck in a batch (pool.h).
 *
 * A place to poll is a token in `places`, a futex word: a thread takes one
 * before it waits for events and parks on the futex while there is none.
 * pool_watch() lends a place by adding a token and counting it in `lent`; the
 * first thread back from a batch that finds a lent place outstanding keeps
 * that place's token out of circulation by parking again instead of polling,
 * so the number of pollers returns to what it was.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "util.h"

#define POOL_EVENTS	16

/* Wait for a place to poll; false when the pool ends. */
static bool
take_place(struct pool *p)
{
	for (;;) {
		uint32_t n = atomic_load(&p->places);

		if (atomic_load(&p->stop))
			return false;
		if (n > 0) {
			if (atomic_compare_exchange_weak(&p->places, &n, n - 1))
				return true;
			continue;
		}
		/* counted before the futex re-checks the word: a place added
		 * after the load above either shows there or finds us counted */
		atomic_fetch_add(&p->parked, 1);
		futex_wait_private(&p->places, 0);
		atomic_fetch_sub(&p->parked, 1);
	}
}

static void
put_place(struct pool *p)
{
	atomic_fetch_add(&p->places, 1);
	if (atomic_load(&p->parked) > 0)
		futex_wake_private(&p->places, 1);
}

/* After a batch: true when this thread must give its place back. */
static bool
owe_place(struct pool *p)
{
	int n = atomic_load_explicit(&p->lent, memory_order_relaxed);

	while (n > 0)
		if (atomic_compare_exchange_weak(&p->lent, &n, n - 1))
			return true;
	return false;
}

static void *
pool_main(void *arg)
{
	struct pool_thread *me = arg;
	struct pool *p = me->pool;
	struct epoll_event ev[POOL_EVENTS];

	while (take_place(p)) {
		for (;;) {
			int i, n = epoll_wait(p->epfd, ev, POOL_EVENTS, -1);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				log_warn("epoll_wait");
				put_place(p);
				return NULL;
			}
			atomic_fetch_add_explicit(&me->batches, 1, memory_order_relaxed);
			atomic_store_explicit(&me->busy, true, memory_order_relaxed);
			for (i = 0; i < n; i++) {
				if (ev[i].data.ptr == p)
					return NULL;	/* the stop event */
				p->serve(ev[i].data.ptr);
			}
			atomic_store_explicit(&me->busy, false, memory_order_relaxed);
			if (owe_place(p))
				break;
		}
	}
	return NULL;
}

int
pool_pollers(int threads, int workers)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int share;

	if (ncpu < 1)
		ncpu = 1;
	if (workers < 1)
		workers = 1;
	/* one poller per CPU this worker may use, and at least two so that a
	 * descheduled poller does not leave the worker deaf; more than that
	 * only compete for the same CPUs */
	share = (int)((ncpu + workers - 1) / workers);
	if (share < 2)
		share = 2;
	return threads < share ? threads : share;
}

int
pool_start(struct pool *p, int epfd, int nthreads, int pollers, size_t stack,
    void (*serve)(void *))
{
	struct epoll_event ev;
	pthread_attr_t attr;
	void *mem;
	int k, err;

	memset(p, 0, sizeof(*p));
	p->epfd = epfd;
	p->serve = serve;
	p->pollers = pollers < 1 ? 1 : pollers > nthreads ? nthreads : pollers;
	atomic_store(&p->places, (uint32_t)p->pollers);
	p->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->stopfd < 0)
		return -1;
	ev.events = EPOLLIN;	/* level: once written, every poller sees it */
	ev.data.ptr = p;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, p->stopfd, &ev) != 0)
		goto fail;
	/* each thread's counters on a cache line of their own: calloc does
	 * not promise the 64-byte alignment struct pool_thread asks for */
	if (posix_memalign(&mem, 64, (size_t)nthreads * sizeof(*p->t)) != 0)
		goto fail;
	memset(mem, 0, (size_t)nthreads * sizeof(*p->t));
	p->t = mem;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, stack);
	for (k = 0; k < nthreads; k++) {
		p->t[k].pool = p;
		if ((err = pthread_create(&p->t[k].tid, &attr, pool_main, &p->t[k])) != 0) {
			pthread_attr_destroy(&attr);
			pool_stop(p);
			errno = err;
			return -1;
		}
		/* named by its maker, so the name is there once pool_start returns */
		pthread_setname_np(p->t[k].tid, "forkd-pool");
		p->nthreads++;
	}
	pthread_attr_destroy(&attr);
	return 0;
fail:
	err = errno;
	close(p->stopfd);
	p->stopfd = -1;
	errno = err;
	return -1;
}

bool
pool_watch(struct pool *p)
{
	bool moving = false;
	int i;

	for (i = 0; i < p->nthreads; i++) {
		struct pool_thread *t = &p->t[i];
		uint64_t b = atomic_load_explicit(&t->batches, memory_order_relaxed);
		bool stuck = atomic_load_explicit(&t->busy, memory_order_relaxed) &&
		    b == t->seen;

		if (!stuck)
			moving = true;
		else if (b != t->lent_for &&
		    atomic_load(&p->lent) < pool_spares(p)) {
			t->lent_for = b;
			atomic_fetch_add(&p->lent, 1);
			atomic_fetch_add_explicit(&p->lends, 1, memory_order_relaxed);
			put_place(p);
		}
		t->seen = b;
	}
	return moving;
}

void
pool_stop(struct pool *p)
{
	uint64_t one = 1;
	int k;

	atomic_store(&p->stop, true);
	if (write(p->stopfd, &one, sizeof(one)) < 0)
		log_warn("cannot stop the pool");
	atomic_fetch_add(&p->places, (uint32_t)p->nthreads);
	futex_wake_private(&p->places, INT_MAX);
	for (k = 0; k < p->nthreads; k++)
		pthread_join(p->t[k].tid, NULL);
	epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->stopfd, NULL);
	close(p->stopfd);
	p->stopfd = -1;
	free(p->t);
	p->t = NULL;
	p->nthreads = 0;
}
