/*
 * For the harnesses that drive services: the fuzzing process plays worker 0
 * of a daemon with no sockets.  The scoreboard and the chat tables are
 * mapped, slot 0 is ready, the struct worker has no epoll set (sessions are
 * never woken through one), and the chat channel layer can be started with
 * delivery from other workers dropped.
 */
#ifndef FORKD_FUZZ_FAKE_WORKER_H
#define FORKD_FUZZ_FAKE_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chan.h"
#include "codec.h"
#include "config.h"
#include "conn.h"
#include "scoreboard.h"
#include "service.h"
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

/* The fuzzer's input as request lines, empty ones left out, as framing would. */
static void
fake_lines(const uint8_t *data, size_t size, void (*fn)(const char *, size_t))
{
	const char *p = (const char *)data, *end = p + size;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);

		if (len > 0)
			fn(p, len);
		p += len + (nl != NULL);
	}
}

/* As conn_open, without a socket: s serves svc (its index, its conf). */
static void
fake_session_open(struct worker *w, struct session *s, const struct service *svc,
    const void *conf, int port)
{
	s->w = w;
	s->svc = svc;
	s->svc_idx = service_index(svc);
	s->svc_conf = conf;
	s->codec = &codec_line;	/* replies pass as the service wrote them */
	s->fd = -1;
	s->closing = false;
	atomic_store(&s->kill, KILL_NONE);
	snprintf(s->peer, sizeof(s->peer), "127.0.0.1:%d", port);
	s->data = svc->session_size > 0 ? calloc(1, svc->session_size) : NULL;
	if (svc->session_size > 0 && s->data == NULL)
		abort();
	atomic_store(&s->open, true);
	if (svc->open != NULL)
		svc->open(s);
}

/* As conn_close: the hook, then the output is thrown away. */
static void
fake_session_close(struct session *s)
{
	if (s->svc->close != NULL)
		s->svc->close(s);
	pthread_mutex_lock(&s->out_lock);
	atomic_store(&s->open, false);
	free(s->out);
	s->out = NULL;
	s->out_len = s->out_off = s->out_cap = 0;
	s->out_full = false;
	pthread_mutex_unlock(&s->out_lock);
	free(s->data);
	s->data = NULL;
}

#endif
