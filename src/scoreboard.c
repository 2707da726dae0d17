#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "scoreboard.h"
#include "util.h"

struct scoreboard *scoreboard;

int
scoreboard_create(void)
{
	void *p;

	p = mmap(NULL, sizeof(struct scoreboard), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	scoreboard = p;
	scoreboard->master_pid = getpid();
	atomic_store(&scoreboard->start_time, (uint64_t)time(NULL));
	atomic_store(&scoreboard->start_ms, now_ms());
	return 0;
}

void
scoreboard_retire(int i)
{
	struct sb_slot *s = &scoreboard->slot[i];
	int k;

	atomic_fetch_add(&scoreboard->retired_served, atomic_load(&s->served));
	atomic_fetch_add(&scoreboard->retired_requests, atomic_load(&s->requests));
	atomic_fetch_add(&scoreboard->retired_rejected, atomic_load(&s->rejected));
	for (k = 0; k < FK_MAX_SERVICES; k++) {
		atomic_fetch_add(&scoreboard->retired_svc_served[k],
		    atomic_load(&s->svc_served[k]));
		atomic_store(&s->svc_served[k], 0);
		atomic_store(&s->svc_conns[k], 0);
	}
	for (k = 0; k < FK_MAX_PROTOCOLS; k++) {
		atomic_fetch_add(&scoreboard->retired_proto_served[k],
		    atomic_load(&s->proto_served[k]));
		atomic_fetch_add(&scoreboard->retired_proto_requests[k],
		    atomic_load(&s->proto_requests[k]));
		atomic_store(&s->proto_served[k], 0);
		atomic_store(&s->proto_requests[k], 0);
		atomic_store(&s->proto_conns[k], 0);
	}
	for (k = 0; k < FK_MAX_KILLS; k++) {
		atomic_fetch_add(&scoreboard->retired_closed[k], atomic_load(&s->closed[k]));
		atomic_store(&s->closed[k], 0);
	}
	atomic_store(&s->served, 0);
	atomic_store(&s->requests, 0);
	atomic_store(&s->rejected, 0);
	atomic_store(&s->conns, 0);
	atomic_store(&s->heartbeat_ms, 0);
	atomic_store(&s->want_recycle, 0);
	atomic_store(&s->sitting_out, 0);
	atomic_store(&s->pid, 0);
	atomic_store(&s->state, SLOT_FREE);
}

void
scoreboard_totals(struct sb_totals *t)
{
	int i, k;

	memset(t, 0, sizeof(*t));
	t->served = atomic_load(&scoreboard->retired_served);
	t->requests = atomic_load(&scoreboard->retired_requests);
	t->rejected = atomic_load(&scoreboard->retired_rejected);
	for (k = 0; k < FK_MAX_SERVICES; k++)
		t->svc_served[k] = atomic_load(&scoreboard->retired_svc_served[k]);
	for (k = 0; k < FK_MAX_PROTOCOLS; k++) {
		t->proto_served[k] = atomic_load(&scoreboard->retired_proto_served[k]);
		t->proto_requests[k] = atomic_load(&scoreboard->retired_proto_requests[k]);
	}
	for (k = 0; k < FK_MAX_KILLS; k++)
		t->closed[k] = atomic_load(&scoreboard->retired_closed[k]);
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct sb_slot *s = &scoreboard->slot[i];
		int st = atomic_load(&s->state);

		if (st == SLOT_FREE)
			continue;
		if (st == SLOT_READY)
			t->ready++;
		else if (st == SLOT_DRAINING)
			t->draining++;
		else
			t->starting++;
		t->conns += atomic_load(&s->conns);
		t->served += atomic_load(&s->served);
		t->requests += atomic_load(&s->requests);
		t->rejected += atomic_load(&s->rejected);
		for (k = 0; k < FK_MAX_SERVICES; k++) {
			t->svc_conns[k] += atomic_load(&s->svc_conns[k]);
			t->svc_served[k] += atomic_load(&s->svc_served[k]);
		}
		for (k = 0; k < FK_MAX_PROTOCOLS; k++) {
			t->proto_conns[k] += atomic_load(&s->proto_conns[k]);
			t->proto_served[k] += atomic_load(&s->proto_served[k]);
			t->proto_requests[k] += atomic_load(&s->proto_requests[k]);
		}
		for (k = 0; k < FK_MAX_KILLS; k++)
			t->closed[k] += atomic_load(&s->closed[k]);
	}
}

long
scoreboard_conns(void)
{
	long n = 0;
	int i;

	/* sequentially consistent: the acceptors' check of max_connections
	 * relies on seeing a place another worker took before it counted */
	for (i = 0; i < FK_MAX_SLOTS; i++)
		n += atomic_load(&scoreboard->slot[i].conns);
	return n;
}
