/*
 * metrics: the scoreboard in Prometheus' text exposition format (0.0.4),
 * over HTTP:  GET /metrics  ->  # HELP / # TYPE / series lines.
 *
 * A scrape only reads the shared scoreboard (relaxed atomic loads, no lock
 * any worker takes), so it never holds up a worker.  Every figure comes from
 * the scoreboard: workers count their own slot; the figures of processes
 * (CPU, memory, descriptors) are sampled by each process about once a second.
 */
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "conn.h"
#include "http.h"
#include "scoreboard.h"
#include "service.h"

_Static_assert(KILL_COUNT <= FK_MAX_KILLS, "closed[] must hold every kill reason");

#define METRICS_PATH	"/metrics"
#define METRICS_CTYPE	"text/plain; version=0.0.4; charset=utf-8"
#define RETIRE_TRIES	1000

/*
 * The longest body: at most METRICS_HEAD_MAX bytes of daemon-wide series
 * and help lines, and five series of at most METRICS_SERIES_MAX bytes for
 * each listener entry (and the overflow entry).
 */
#define METRICS_HEAD_MAX	8192
#define METRICS_SERIES_MAX	184
#define METRICS_LISTENER_MAX	(5 * METRICS_SERIES_MAX)

/* why connections were closed, by enum conn_kill; NULL: "other" */
static const char *const close_reason[FK_MAX_KILLS] = {
	[KILL_NONE] = "client",
	[KILL_SHUTDOWN] = "shutdown",
	[KILL_RETIRE] = "reload",
	[KILL_IDLE] = "idle",
	[KILL_SEND_TIMEOUT] = "send_timeout",
	[KILL_OVERFLOW] = "too_slow",
	[KILL_PROTOCOL] = "protocol",
};

static const char *const refuse_reason[REFUSE_COUNT] = {
	[REFUSE_MAX_CONNECTIONS] = "max_connections",
	[REFUSE_PER_IP] = "per_ip",
	[REFUSE_EMFILE] = "emfile",
};

/* One consistent reading of the scoreboard. */
struct reading {
	uint64_t	refused[REFUSE_COUNT];
	uint64_t	closed[FK_MAX_KILLS];
	uint64_t	chat_delivered, chat_dropped;
	long		chat_members;
	uint64_t	cpu_us, rss_bytes;
	long		fds;
	int		ready;
	int		nl;
	long		lconns[SB_MAX_LISTENERS + 1];
	struct {
		uint64_t accepted, requests, bytes_in, bytes_out;
	}		lc[SB_MAX_LISTENERS + 1];
};

#define LOAD(p)	atomic_load_explicit((p), memory_order_relaxed)

static void
add_lc(struct reading *r, int k, const struct sb_lcount *c, bool gauges)
{
	r->lc[k].accepted += LOAD(&c->accepted);
	r->lc[k].requests += LOAD(&c->requests);
	r->lc[k].bytes_in += LOAD(&c->bytes_in);
	r->lc[k].bytes_out += LOAD(&c->bytes_out);
	if (gauges)
		r->lconns[k] += LOAD(&c->conns);
}

/* Sum one pass over the retired totals and the live slots. */
static void
read_once(struct reading *r)
{
	struct scoreboard *sb = scoreboard;
	int i, k, nk;

	memset(r, 0, sizeof(*r));
	r->nl = atomic_load_explicit(&sb->nlkeys, memory_order_acquire);
	nk = r->nl;	/* entries 0..nk-1, then the overflow entry */
	for (k = 0; k < REFUSE_COUNT; k++)
		r->refused[k] = LOAD(&sb->retired_refused[k]);
	for (k = 0; k < FK_MAX_KILLS; k++)
		r->closed[k] = LOAD(&sb->retired_closed[k]);
	r->chat_delivered = LOAD(&sb->retired_chat_delivered);
	r->chat_dropped = LOAD(&sb->retired_chat_dropped);
	r->cpu_us = LOAD(&sb->retired_cpu_us) + LOAD(&sb->master_proc.cpu_us);
	r->rss_bytes = LOAD(&sb->master_proc.rss_bytes);
	r->fds = LOAD(&sb->master_proc.fds);
	for (k = 0; k < nk; k++)
		add_lc(r, k, &sb->retired_lc[k], false);
	add_lc(r, SB_MAX_LISTENERS, &sb->retired_lc[SB_MAX_LISTENERS], false);

	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct sb_slot *s = &sb->slot[i];
		int st = LOAD(&s->state);

		if (st == SLOT_FREE)
			continue;
		if (st == SLOT_READY)
			r->ready++;
		for (k = 0; k < REFUSE_COUNT; k++)
			r->refused[k] += LOAD(&s->refused[k]);
		for (k = 0; k < FK_MAX_KILLS; k++)
			r->closed[k] += LOAD(&s->closed[k]);
		r->chat_delivered += LOAD(&s->chat_delivered);
		r->chat_dropped += LOAD(&s->chat_dropped);
		r->chat_members += LOAD(&s->chat_members);
		r->cpu_us += LOAD(&s->proc.cpu_us);
		r->rss_bytes += LOAD(&s->proc.rss_bytes);
		r->fds += LOAD(&s->proc.fds);
		for (k = 0; k < nk; k++)
			add_lc(r, k, &s->lc[k], true);
		add_lc(r, SB_MAX_LISTENERS, &s->lc[SB_MAX_LISTENERS], true);
	}
}

/*
 * The master folds a dead worker's counters into the retired totals while
 * we read; a pass it overlapped may count them twice or not at all, so it
 * is read again (the master is never waited for: it is a few stores away).
 */
static void
read_scoreboard(struct reading *r)
{
	int tries;

	for (tries = 0; tries < RETIRE_TRIES; tries++) {
		unsigned before = atomic_load(&scoreboard->retire_seq);

		if (before & 1) {
			sched_yield();	/* let the master finish the fold */
			continue;
		}
		read_once(r);
		if (atomic_load(&scoreboard->retire_seq) == before)
			return;
	}
	read_once(r);
}

/* ---- the text format ---- */

struct out {
	char	*buf;
	size_t	 len, cap;
	bool	 failed;
};

static void __attribute__((format(printf, 2, 3)))
put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		if (o->failed)
			return;
		va_start(ap, fmt);
		n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->failed = true;
			return;
		}
		if ((size_t)n < o->cap - o->len) {
			o->len += (size_t)n;
			return;
		}
		{
			size_t cap = o->cap * 2 + (size_t)n;
			char *nb = realloc(o->buf, cap);

			if (nb == NULL) {
				o->failed = true;
				return;
			}
			o->buf = nb;
			o->cap = cap;
		}
	}
}

static void
family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value: backslash, double quote and line feed are escaped. */
static void
put_label(struct out *o, const char *name, const char *value, bool first)
{
	put(o, "%s%s=\"", first ? "" : ",", name);
	while (*value != '\0') {
		size_t n = strcspn(value, "\\\"\n");

		if (n > 0)
			put(o, "%.*s", (int)n, value);
		value += n;
		if (*value != '\0') {
			put(o, "\\%c", *value == '\n' ? 'n' : *value);
			value++;
		}
	}
	put(o, "\"");
}

static void
put_u64(struct out *o, uint64_t v)
{
	put(o, " %llu\n", (unsigned long long)v);
}

/* The labels of listener entry k: {listener="...",service="...",protocol="..."} */
static void
put_listener(struct out *o, const struct reading *r, const char *name, int k)
{
	const struct sb_lkey *key = &scoreboard->lkeys[k];
	const char *svc = "", *proto = "", *at = "other";

	if (k < r->nl) {
		at = key->listener;
		if (key->service >= 0 && key->service < FK_MAX_SERVICES &&
		    services[key->service] != NULL)
			svc = services[key->service]->name;
		if (key->protocol >= 0 && key->protocol < PROTO_COUNT)
			proto = protocol_names[key->protocol];
	}
	put(o, "%s{", name);
	put_label(o, "listener", at, true);
	put_label(o, "service", svc, false);
	put_label(o, "protocol", proto, false);
	put(o, "}");
}

/* Entries to show: those handed out, and the overflow one once in use. */
static bool
entry_shown(const struct reading *r, int k)
{
	return k < r->nl || (k == SB_MAX_LISTENERS && r->nl == SB_MAX_LISTENERS);
}

#define EACH_ENTRY(r, k)	\
	for ((k) = 0; (k) <= SB_MAX_LISTENERS; (k)++) if (entry_shown((r), (k)))

static void
put_listeners(struct out *o, const struct reading *r)
{
	int k;

	family(o, "forkd_connections_open", "gauge", "Client connections open now.");
	EACH_ENTRY(r, k) {
		put_listener(o, r, "forkd_connections_open", k);
		put(o, " %ld\n", r->lconns[k] > 0 ? r->lconns[k] : 0);
	}
	family(o, "forkd_connections_accepted_total", "counter",
	    "Client connections accepted.");
	EACH_ENTRY(r, k) {
		put_listener(o, r, "forkd_connections_accepted_total", k);
		put_u64(o, r->lc[k].accepted);
	}
	family(o, "forkd_requests_total", "counter",
	    "Requests handed to the service (lines, messages, HTTP requests).");
	EACH_ENTRY(r, k) {
		put_listener(o, r, "forkd_requests_total", k);
		put_u64(o, r->lc[k].requests);
	}
	family(o, "forkd_received_bytes_total", "counter", "Bytes read from clients.");
	EACH_ENTRY(r, k) {
		put_listener(o, r, "forkd_received_bytes_total", k);
		put_u64(o, r->lc[k].bytes_in);
	}
	family(o, "forkd_sent_bytes_total", "counter", "Bytes written to clients.");
	EACH_ENTRY(r, k) {
		put_listener(o, r, "forkd_sent_bytes_total", k);
		put_u64(o, r->lc[k].bytes_out);
	}
}

static void
put_all(struct out *o, const struct reading *r)
{
	uint64_t restarts = atomic_load(&scoreboard->restarts);
	uint64_t hung = atomic_load(&scoreboard->restarts_hung);
	uint64_t other = 0;
	long rooms = atomic_load(&scoreboard->chat_rooms);
	int k;

	family(o, "forkd_build_info", "gauge",
	    "Always 1; the version of the running forkd is in its label.");
	put(o, "forkd_build_info{");
	put_label(o, "version", PACKAGE_VERSION, true);
	put(o, "} 1\n");

	put_listeners(o, r);

	family(o, "forkd_connections_refused_total", "counter",
	    "Connections refused at accept, by the limit that refused them.");
	for (k = 0; k < REFUSE_COUNT; k++)
		put(o, "forkd_connections_refused_total{reason=\"%s\"} %llu\n",
		    refuse_reason[k], (unsigned long long)r->refused[k]);
	family(o, "forkd_connections_closed_total", "counter",
	    "Client connections closed, by why they ended.");
	for (k = 0; k < FK_MAX_KILLS; k++) {
		if (close_reason[k] == NULL)
			other += r->closed[k];
		else
			put(o, "forkd_connections_closed_total{reason=\"%s\"} %llu\n",
			    close_reason[k], (unsigned long long)r->closed[k]);
	}
	put(o, "forkd_connections_closed_total{reason=\"other\"} %llu\n",
	    (unsigned long long)other);

	family(o, "forkd_workers_wanted", "gauge", "Worker processes the master keeps.");
	put(o, "forkd_workers_wanted %d\n", atomic_load(&scoreboard->workers));
	family(o, "forkd_workers_ready", "gauge", "Worker processes accepting now.");
	put(o, "forkd_workers_ready %d\n", r->ready);
	family(o, "forkd_worker_restarts_total", "counter",
	    "Workers replaced, by cause.");
	put(o, "forkd_worker_restarts_total{cause=\"crash\"} %llu\n",
	    (unsigned long long)(restarts > hung ? restarts - hung : 0));
	put(o, "forkd_worker_restarts_total{cause=\"hung\"} %llu\n",
	    (unsigned long long)hung);
	put(o, "forkd_worker_restarts_total{cause=\"recycled\"} %llu\n",
	    (unsigned long long)atomic_load(&scoreboard->recycled));
	family(o, "forkd_reloads_total", "counter", "Configuration reloads, by result.");
	put(o, "forkd_reloads_total{result=\"success\"} %llu\n",
	    (unsigned long long)atomic_load(&scoreboard->reloads));
	put(o, "forkd_reloads_total{result=\"failure\"} %llu\n",
	    (unsigned long long)atomic_load(&scoreboard->reload_failures));

	family(o, "forkd_chat_rooms", "gauge", "Chat rooms with members on this host.");
	put(o, "forkd_chat_rooms %ld\n", rooms > 0 ? rooms : 0);
	family(o, "forkd_chat_members", "gauge", "Chat room members on this host.");
	put(o, "forkd_chat_members %ld\n", r->chat_members > 0 ? r->chat_members : 0);
	family(o, "forkd_chat_messages_delivered_total", "counter",
	    "Chat lines queued to members on this host.");
	put(o, "forkd_chat_messages_delivered_total %llu\n",
	    (unsigned long long)r->chat_delivered);
	family(o, "forkd_chat_messages_dropped_total", "counter",
	    "Chat lines lost because a worker could not keep up.");
	put(o, "forkd_chat_messages_dropped_total %llu\n",
	    (unsigned long long)r->chat_dropped);

	family(o, "forkd_process_start_time_seconds", "gauge",
	    "When the master started, in seconds since the epoch.");
	put(o, "forkd_process_start_time_seconds %llu\n",
	    (unsigned long long)atomic_load(&scoreboard->start_time));
	family(o, "forkd_process_cpu_seconds_total", "counter",
	    "User and system CPU time of the master and every worker, past and present.");
	put(o, "forkd_process_cpu_seconds_total %llu.%06llu\n",
	    (unsigned long long)(r->cpu_us / 1000000),
	    (unsigned long long)(r->cpu_us % 1000000));
	family(o, "forkd_process_resident_memory_bytes", "gauge",
	    "Resident memory of the master and the workers, summed.");
	put(o, "forkd_process_resident_memory_bytes %llu\n",
	    (unsigned long long)r->rss_bytes);
	family(o, "forkd_process_open_fds", "gauge",
	    "Open file descriptors of the master and the workers, summed.");
	put(o, "forkd_process_open_fds %ld\n", r->fds);
}

/* ---- the service ---- */

static void
metrics_http(struct session *s, const struct http_request *req)
{
	static const char not_found[] = "Not Found: metrics are at " METRICS_PATH "\n";
	static const char not_allowed[] = "Method Not Allowed: use GET or HEAD\n";
	bool head = strcmp(req->method, "HEAD") == 0;
	struct reading *r;
	struct out o = { NULL, 0, 0, false };

	if (strcmp(req->path, METRICS_PATH) != 0) {
		http_respond(s, 404, "text/plain; charset=utf-8", NULL, not_found,
		    sizeof(not_found) - 1, head, req->keep_alive);
		return;
	}
	if (!head && strcmp(req->method, "GET") != 0) {
		http_respond(s, 405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n",
		    not_allowed, sizeof(not_allowed) - 1, false, req->keep_alive);
		return;
	}
	r = malloc(sizeof(*r));
	o.cap = METRICS_HEAD_MAX;
	o.buf = malloc(o.cap);
	if (r == NULL || o.buf == NULL) {
		free(r);
		free(o.buf);
		http_respond(s, 503, "text/plain; charset=utf-8", NULL,
		    "out of memory\n", 14, head, false);
		return;
	}
	read_scoreboard(r);
	put_all(&o, r);
	if (o.failed)
		http_respond(s, 503, "text/plain; charset=utf-8", NULL,
		    "out of memory\n", 14, head, false);
	else
		http_respond(s, 200, METRICS_CTYPE, NULL, o.buf, o.len, head,
		    req->keep_alive);
	free(o.buf);
	free(r);
}

const struct service service_metrics = {
	.name = "metrics",
	.max_reply = METRICS_HEAD_MAX + (SB_MAX_LISTENERS + 1) * METRICS_LISTENER_MAX,
	.http = metrics_http,
};
