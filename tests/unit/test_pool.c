/*
 * The pool: events get served; a thread stuck in a handler does not stop the
 * others once pool_watch lends its place; the place comes back; a pool whose
 * every thread is stuck says so; pool_stop ends parked and polling threads.
 */
#include <errno.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pool.h"
#include "util.h"

#define NITEMS	8

struct item {
	int		 fd;
	bool		 block;		/* wait for the gate before counting */
	_Atomic int	 served;
};

static struct item items[NITEMS];
static sem_t gate;
static _Atomic int blocked;	/* handlers waiting at the gate */

static void
serve(void *arg)
{
	struct item *it = arg;
	uint64_t v;

	while (read(it->fd, &v, sizeof(v)) == sizeof(v))
		;
	if (it->block) {
		atomic_fetch_add(&blocked, 1);
		while (sem_wait(&gate) != 0 && errno == EINTR)
			;
		atomic_fetch_sub(&blocked, 1);
	}
	atomic_fetch_add(&it->served, 1);
}

static void
poke(struct item *it)
{
	uint64_t one = 1;

	if (write(it->fd, &one, sizeof(one)) != sizeof(one))
		abort();
}

static void
nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * Wait up to ms for *v >= want, calling pool_watch every POOL_WATCH_MS as the
 * worker's main thread does (when p is not NULL).
 */
static bool
await(struct pool *p, _Atomic int *v, int want, long ms)
{
	uint64_t end = now_ms() + (uint64_t)ms;

	while (atomic_load(v) < want) {
		if (now_ms() >= end)
			return false;
		nap_ms(POOL_WATCH_MS);
		if (p != NULL)
			pool_watch(p);
	}
	return true;
}

static int
setup(void)
{
	struct epoll_event ev;
	int i, ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep < 0)
		abort();
	for (i = 0; i < NITEMS; i++) {
		items[i].fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		items[i].block = false;
		atomic_store(&items[i].served, 0);
		ev.events = EPOLLIN | EPOLLET;
		ev.data.ptr = &items[i];
		if (items[i].fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, items[i].fd, &ev) != 0)
			abort();
	}
	return ep;
}

static void
teardown(int ep)
{
	int i;

	for (i = 0; i < NITEMS; i++)
		close(items[i].fd);
	close(ep);
}

static void
test_serves_everything(void)
{
	struct pool p;
	int ep = setup(), i, round;

	CHECK(pool_start(&p, ep, 6, 2, 64 * 1024, serve) == 0, "pool_start");
	CHECK(p.nthreads == 6 && p.pollers == 2, "%d threads, %d pollers",
	    p.nthreads, p.pollers);
	for (round = 1; round <= 50; round++) {
		for (i = 0; i < NITEMS; i++)
			poke(&items[i]);
		for (i = 0; i < NITEMS; i++)
			if (!await(NULL, &items[i].served, round, 5000))
				break;
		if (i < NITEMS)
			break;
	}
	CHECK(round == 51, "every event of 50 rounds served (stopped in round %d)", round);
	CHECK(atomic_load(&p.lends) == 0, "no place lent while nothing is stuck: %llu",
	    (unsigned long long)atomic_load(&p.lends));
	pool_stop(&p);
	CHECK(p.nthreads == 0, "pool_stop joined every thread");
	teardown(ep);
}

static void
test_stuck_poller_is_relieved(void)
{
	struct pool p;
	int ep = setup(), i;

	/* one poller, three spares: without a lent place nothing else runs */
	CHECK(pool_start(&p, ep, 4, 1, 64 * 1024, serve) == 0, "pool_start");
	items[0].block = true;
	poke(&items[0]);
	CHECK(await(NULL, &blocked, 1, 5000), "the slow handler runs");
	for (i = 1; i < NITEMS; i++)
		poke(&items[i]);
	/* nobody watches yet: the only poller is stuck, the rest stay parked */
	nap_ms(3 * POOL_WATCH_MS);
	CHECK(atomic_load(&items[1].served) == 0, "parked threads do not poll");
	for (i = 1; i < NITEMS; i++)
		CHECK(await(&p, &items[i].served, 1, 5000),
		    "item %d served while the poller is stuck", i);
	CHECK(atomic_load(&p.lends) == 1, "one place lent for one stuck batch: %llu",
	    (unsigned long long)atomic_load(&p.lends));

	/* the slow handler ends: the next batch gives the extra place back */
	sem_post(&gate);
	CHECK(await(NULL, &items[0].served, 1, 5000), "the slow handler finished");
	items[0].block = false;
	for (i = 0; i < 20 && atomic_load(&p.lent) > 0; i++) {
		int before = atomic_load(&items[2].served);

		poke(&items[2]);
		await(NULL, &items[2].served, before + 1, 5000);
	}
	CHECK(atomic_load(&p.lent) == 0, "the lent place was given back (lent %d)",
	    atomic_load(&p.lent));
	pool_stop(&p);
	teardown(ep);
}

static void
test_all_stuck_is_reported(void)
{
	struct pool p;
	int ep = setup();

	CHECK(pool_start(&p, ep, 2, 2, 64 * 1024, serve) == 0, "pool_start");
	CHECK(pool_watch(&p) && pool_watch(&p), "an idle pool is moving");
	items[0].block = items[1].block = true;
	poke(&items[0]);
	CHECK(await(NULL, &blocked, 1, 5000), "one thread in a slow handler");
	poke(&items[1]);
	CHECK(await(NULL, &blocked, 2, 5000), "both threads are in slow handlers");
	pool_watch(&p);
	CHECK(!pool_watch(&p), "every thread stuck: the pool is not moving");
	CHECK(atomic_load(&p.lends) == 0, "no spare to lend a place to");
	sem_post(&gate);
	sem_post(&gate);
	CHECK(await(NULL, &items[1].served, 1, 5000) &&
	    await(NULL, &items[0].served, 1, 5000), "both finish");
	nap_ms(POOL_WATCH_MS);
	CHECK(pool_watch(&p), "moving again");
	pool_stop(&p);
	teardown(ep);
}

static void
test_pollers(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	CHECK(pool_pollers(1, 4) == 1, "never more pollers than threads");
	CHECK(pool_pollers(64, (int)ncpu) == 2, "a worker per CPU: 2 pollers, got %d",
	    pool_pollers(64, (int)ncpu));
	CHECK(pool_pollers(64, 1) == (int)MIN(MAX(ncpu, 2), 64),
	    "one worker: a poller per CPU, at least 2, got %d", pool_pollers(64, 1));
	CHECK(pool_pollers(64, 64) == 2, "more workers than CPUs: still 2, got %d",
	    pool_pollers(64, 64));
}

int
main(void)
{
	alarm(60);	/* a hang in pool_stop fails the test instead of stalling make check */
	sem_init(&gate, 0, 0);
	test_serves_everything();
	test_stuck_poller_is_relieved();
	test_all_stuck_is_reported();
	test_pollers();
	return check_done();
}
