/*
 * stats: memcached-style counters from the shared scoreboard.
 *   stats  ->  STAT name value ... END
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "chan.h"
#include "codec.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"

/*
 * The longest "stats" reply: at most STATS_HEAD_MAX bytes of lines before
 * the workers' (about 30 lines of at most 48 bytes), and six lines of at
 * most 48 bytes for each slot in use, up to every slot during a reload.
 */
#define STATS_HEAD_MAX	4096
#define STATS_SLOT_MAX	384

static void
stats_all(struct session *s)
{
	struct sb_totals t;
	uint64_t now = now_ms();
	int i;

	scoreboard_totals(&t);
	session_reply(s, "STAT pid %ld", (long)scoreboard->master_pid);
	session_reply(s, "STAT version %s", PACKAGE_VERSION);
	session_reply(s, "STAT uptime %llu",
	    (unsigned long long)((now - atomic_load(&scoreboard->start_ms)) / 1000));
	session_reply(s, "STAT time %lld", (long long)time(NULL));
	session_reply(s, "STAT generation %u", atomic_load(&scoreboard->generation));
	session_reply(s, "STAT workers %d", atomic_load(&scoreboard->workers));
	session_reply(s, "STAT workers_ready %d", t.ready);
	session_reply(s, "STAT workers_draining %d", t.draining);
	session_reply(s, "STAT threads %d", atomic_load(&scoreboard->threads));
	session_reply(s, "STAT curr_connections %ld", t.conns);
	session_reply(s, "STAT total_connections %llu", (unsigned long long)t.served);
	session_reply(s, "STAT rejected_connections %llu", (unsigned long long)t.rejected);
	session_reply(s, "STAT requests %llu", (unsigned long long)t.requests);
	for (i = 0; services[i] != NULL && i < FK_MAX_SERVICES; i++) {
		session_reply(s, "STAT %s_curr_connections %ld", services[i]->name,
		    t.svc_conns[i]);
		session_reply(s, "STAT %s_total_connections %llu", services[i]->name,
		    (unsigned long long)t.svc_served[i]);
	}
	for (i = 0; i < PROTO_COUNT; i++) {
		session_reply(s, "STAT protocol.%s.curr_connections %ld", protocol_names[i],
		    t.proto_conns[i]);
		session_reply(s, "STAT protocol.%s.total_connections %llu", protocol_names[i],
		    (unsigned long long)t.proto_served[i]);
		session_reply(s, "STAT protocol.%s.requests %llu", protocol_names[i],
		    (unsigned long long)t.proto_requests[i]);
	}
	session_reply(s, "STAT worker_restarts %llu",
	    (unsigned long long)atomic_load(&scoreboard->restarts));
	session_reply(s, "STAT worker_recycles %llu",
	    (unsigned long long)atomic_load(&scoreboard->recycled));
	session_reply(s, "STAT reloads %llu",
	    (unsigned long long)atomic_load(&scoreboard->reloads));
	session_reply(s, "STAT reload_failures %llu",
	    (unsigned long long)atomic_load(&scoreboard->reload_failures));
	{
		static const char *const link_names[] = { "none", "down", "up" };
		struct chan_counters cc;
		int link = chan_link();

		/* "none": this host's chat has no other hosts (chat.layer "local") */
		chan_counters(&cc);
		session_reply(s, "STAT chat_redis_link %s", link_names[link]);
		session_reply(s, "STAT chat_redis_published %llu", cc.published);
		session_reply(s, "STAT chat_redis_received %llu", cc.received);
		session_reply(s, "STAT chat_redis_lost %llu", cc.lost);
		session_reply(s, "STAT chat_redis_links %llu", cc.links);
	}
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct sb_slot *w = &scoreboard->slot[i];
		int st = atomic_load(&w->state);

		pid_t pid = atomic_load(&w->pid);

		if (st == SLOT_FREE || pid == 0)
			continue;	/* free, or being forked this very moment */
		session_reply(s, "STAT worker.%d.pid %ld", i, (long)pid);
		session_reply(s, "STAT worker.%d.generation %u", i, atomic_load(&w->generation));
		session_reply(s, "STAT worker.%d.state %s", i,
		    st == SLOT_READY ? "ready" : st == SLOT_DRAINING ? "draining" : "starting");
		session_reply(s, "STAT worker.%d.connections %ld", i, atomic_load(&w->conns));
		session_reply(s, "STAT worker.%d.served %llu", i,
		    (unsigned long long)atomic_load(&w->served));
		session_reply(s, "STAT worker.%d.requests %llu", i,
		    (unsigned long long)atomic_load(&w->requests));
	}
	session_reply(s, "END");
}

static void
stats_line(struct session *s, char *line, size_t len)
{
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		line[--len] = '\0';
	if (len == 5 && strncasecmp(line, "stats", 5) == 0)
		stats_all(s);
	else
		session_reply(s, "ERR unknown command (try: stats, quit)");
}

const struct service service_stats = {
	.name = "stats",
	.max_reply = STATS_HEAD_MAX + FK_MAX_SLOTS * STATS_SLOT_MAX,
	.line = stats_line,
};
