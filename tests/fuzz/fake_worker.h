/*
 * For the harnesses that drive services: the fuzzing process plays worker 0
 * of a daemon with no sockets.  The scoreboard and the chat tables are
 * mapped, slot 0 is ready, the struct worker has no epoll set (sessions are
 * never woken through one), and the chat channel layer can be started with
 * delivery from other workers dropped.
 */
#ifndef FORKD_FUZZ_FAKE_WORKER_H
#define FORKD_FUZZ_FAKE_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "chan.h"
#include "config.h"
#include "scoreboard.h"
#include "worker.h"

static void
fake_dropped_remote(const char *room, const char *line, size_t len)
{
	(void)room;
	(void)line;
	(void)len;
}

/* Load conf_text as file `path`, set up w as worker 0; abort on failure. */
static struct fk_config *
fake_worker(const char *who, const char *path, const char *conf_text,
    struct worker *w, bool start_chan)
{
	static struct config_errors errs;
	/* same order as struct chan_limits: max_rooms, max_members */
	struct chan_limits lim = { 4, 2 };
	struct fk_config *cfg = config_load_string(path, conf_text, &errs);

	if (cfg == NULL) {
		fprintf(stderr, "%s: bad built-in config: %s\n", who, errs.msg[0]);
		abort();
	}
	if (scoreboard_create() != 0 || chan_setup() != 0) {
		fprintf(stderr, "%s: cannot map the shared tables\n", who);
		abort();
	}
	atomic_store(&scoreboard->slot[0].pid, getpid());
	atomic_store(&scoreboard->slot[0].state, SLOT_READY);
	if (start_chan && chan_start(0, &lim, fake_dropped_remote) != 0) {
		fprintf(stderr, "%s: chan_start failed\n", who);
		abort();
	}
	w->cfg = cfg;
	w->epfd = -1;
	w->slot = 0;
	w->sb = &scoreboard->slot[0];
	return cfg;
}

#endif
