#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "scoreboard.h"
#include "service.h"
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
	int k, nl;

	atomic_fetch_add(&scoreboard->retire_seq, 1);
	atomic_fetch_add(&scoreboard->retired_served, atomic_load(&s->served));
	atomic_fetch_add(&scoreboard->retired_requests, atomic_load(&s->requests));
	atomic_fetch_add(&scoreboard->retired_rejected, atomic_load(&s->rejected));
	for (k = 0; k < FK_MAX_SERVICES; k++) {
		atomic_fetch_add(&scoreboard->retired_svc_served[k],
		    atomic_load(&s->svc_served[k]));
		atomic_store(&s->svc_served[k], 0);
		atomic_store(&s->svc_conns[k], 0);
	}
	for (k = 0; k < REFUSE_COUNT; k++) {
		atomic_fetch_add(&scoreboard->retired_refused[k],
		    atomic_exchange(&s->refused[k], 0));
	}
	atomic_fetch_add(&scoreboard->retired_chat_delivered,
	    atomic_exchange(&s->chat_delivered, 0));
	atomic_fetch_add(&scoreboard->retired_chat_dropped,
	    atomic_exchange(&s->chat_dropped, 0));
	atomic_fetch_add(&scoreboard->retired_cpu_us, atomic_exchange(&s->proc.cpu_us, 0));
	atomic_store(&s->proc.rss_bytes, 0);
	atomic_store(&s->proc.fds, 0);
	atomic_store(&s->chat_members, 0);
	/* only the entries ever handed out were touched (and the last one) */
	nl = atomic_load(&scoreboard->nlkeys);
	for (k = 0; k <= SB_MAX_LISTENERS; k++) {
		struct sb_lcount *from, *to;

		if (k == nl)
			k = SB_MAX_LISTENERS;
		from = &s->lc[k];
		to = &scoreboard->retired_lc[k];
		atomic_fetch_add(&to->accepted, atomic_exchange(&from->accepted, 0));
		atomic_fetch_add(&to->requests, atomic_exchange(&from->requests, 0));
		atomic_fetch_add(&to->bytes_in, atomic_exchange(&from->bytes_in, 0));
		atomic_fetch_add(&to->bytes_out, atomic_exchange(&from->bytes_out, 0));
		atomic_store(&from->conns, 0);
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
	atomic_fetch_add(&scoreboard->retire_seq, 1);
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

void
scoreboard_listeners(struct fk_config *cfg)
{
	size_t i;
	int k, n = atomic_load(&scoreboard->nlkeys);

	for (i = 0; i < cfg->nlisteners; i++) {
		struct fk_listener *l = &cfg->listeners[i];
		struct sb_lkey key;

		memset(&key, 0, sizeof(key));
		sockaddr_text((struct sockaddr *)&l->addr, key.listener, sizeof(key.listener));
		key.service = service_index(l->service);
		key.protocol = l->protocol;
		for (k = 0; k < n; k++)
			if (memcmp(&scoreboard->lkeys[k], &key, sizeof(key)) == 0)
				break;
		if (k == n && n < SB_MAX_LISTENERS) {
			/* published after the entry is written: workers forked
			 * later see both, a scrape in flight sees one or none */
			scoreboard->lkeys[n++] = key;
			atomic_store_explicit(&scoreboard->nlkeys, n, memory_order_release);
		}
		l->metrics_id = k < n ? k : -1;
	}
}

/* Counting entries of /proc/self/fd costs a few microseconds per hundred. */
static long
count_fds(void)
{
	struct dirent *de;
	DIR *d = opendir("/proc/self/fd");
	long n = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n > 0 ? n - 1 : 0;	/* not the directory's own descriptor */
}

void
scoreboard_sample(struct sb_proc *p)
{
	struct timespec ts;
	char buf[128];
	unsigned long size, resident;
	ssize_t n;
	int fd;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0) {
		uint64_t us = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;

		/* never backwards, whatever the clock says */
		if (us > atomic_load_explicit(&p->cpu_us, memory_order_relaxed))
			atomic_store_explicit(&p->cpu_us, us, memory_order_relaxed);
	}
	if ((fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)) >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			buf[n] = '\0';
			if (sscanf(buf, "%lu %lu", &size, &resident) == 2)
				atomic_store_explicit(&p->rss_bytes, (uint64_t)resident *
				    (uint64_t)sysconf(_SC_PAGESIZE), memory_order_relaxed);
		}
	}
	atomic_store_explicit(&p->fds, count_fds(), memory_order_relaxed);
}
