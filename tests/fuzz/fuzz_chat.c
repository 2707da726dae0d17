/*
 * libFuzzer harness for the chat service's command handling
 * (service_chat.c), with three sessions of one worker built by hand: no
 * sockets, no epoll (epfd is -1, so session_wake's epoll_ctl just fails),
 * and the channel layer's shared member table from chan_setup().
 *
 * Input: lines separated by '\n'.  The first byte of a line picks what
 * happens:
 *   (b & 0xf0) == 0xf0   session b % 3 disconnects (its close hook runs)
 *   otherwise            the rest of the line is a request from session
 *                        b % 3 (a session that is closed connects again
 *                        first, as a new client)
 * Session 2 speaks JSON (format = "json"), the others text.
 * After every step each session's queued output is taken and checked: a
 * sequence of whole lines, each ending in "\r\n", no bare '\n', never more
 * than max_output; the JSON session's lines are each one JSON object (but
 * for the "Bye" that ends a session).  A session whose queue overflowed, or that said /quit,
 * is closed the way the connection layer would close it.  At the end every
 * session is closed and freed, and nothing may be left in the member table.
 *
 * chan_start() is called once at startup, with small room limits, so that
 * rooms, broadcasts, full rooms, /who and /nick inside a room are reached.
 * FUZZ_CHAT_CHAN_START=0 in the environment leaves it out: then the room
 * limits stay at zero and every join is refused.
 * FUZZ_CHAT_TRACE=1 prints every session's replies (to look at a seed).
 *
 *   tests/fuzz/run 60          (builds and runs every harness)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "chan.h"
#include "config.h"
#include "conn.h"
#include "scoreboard.h"
#include "service.h"
#include "worker.h"

#include "fake_worker.h"

int	 LLVMFuzzerInitialize(int *, char ***);
int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

extern const struct service service_chat;

#define NSESS	3

static const char chat_conf_text[] =
    "max_line = 1024;\n"
    "max_output = 8192;\n"
    "listeners = ( { address = \"127.0.0.1\"; port = 5005; service = \"chat\"; } );\n"
    "chat = { default_room = \"lobby\"; max_rooms = 4; max_members = 2; };\n";

/* the same chat, as a member that speaks JSON sees it */
static const char chat_json_conf_text[] =
    "max_line = 1024;\n"
    "max_output = 8192;\n"
    "listeners = ( { address = \"127.0.0.1\"; port = 5005; service = \"chat\"; } );\n"
    "chat = { default_room = \"lobby\"; max_rooms = 4; max_members = 2; "
    "format = \"json\"; };\n";
#define JSON_SESS	2

static struct fk_config	*cfg, *cfg_json;
static struct worker	 w;
static struct session	 sess[NSESS];
static const void	*chat_conf, *chat_json_conf;
static bool		 trace;		/* FUZZ_CHAT_TRACE=1: show the replies */

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *env = getenv("FUZZ_CHAT_CHAN_START");
	int i;

	(void)argc;
	(void)argv;
	trace = getenv("FUZZ_CHAT_TRACE") != NULL;
	cfg = fake_worker("fuzz_chat", "fuzz-chat.conf", chat_conf_text, &w,
	    env == NULL || strcmp(env, "0") != 0);
	chat_conf = cfg->service_conf[service_index(&service_chat)];
	{
		struct config_errors errs = { .count = 0 };

		cfg_json = config_load_string("fuzz-chat-json.conf", chat_json_conf_text,
		    &errs);
		if (cfg_json == NULL)
			abort();
		chat_json_conf = cfg_json->service_conf[service_index(&service_chat)];
	}
	for (i = 0; i < NSESS; i++) {
		if (pthread_mutex_init(&sess[i].out_lock, NULL) != 0)
			abort();
		sess[i].fd = -1;
	}
	return 0;
}

static void
sess_open(struct session *s)
{
	fake_session_open(&w, s, &service_chat, s - sess == JSON_SESS ? chat_json_conf :
	    chat_conf, 40000 + (int)(s - sess));
}

static void
sess_close(struct session *s)
{
	fake_session_close(s);
}

/* Take what is queued for s and check that it is whole "\r\n" lines. */
static void
drain(struct session *s)
{
	size_t i, n;
	const char *p;
	bool full;

	pthread_mutex_lock(&s->out_lock);
	if (s->out_off > s->out_len || s->out_len > s->out_cap)
		abort();
	n = s->out_len - s->out_off;
	p = n > 0 ? s->out + s->out_off : "";
	if (n > (size_t)cfg->max_output)
		abort();
	if (n > 0 && (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n'))
		abort();
	for (i = 0; i < n; i++)
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			abort();
	for (i = 0; s - sess == JSON_SESS && i < n; ) {
		const char *eol = memchr(p + i, '\n', n - i);
		size_t llen = (size_t)(eol - (p + i)) - 1;
		json_t *j;

		i = (size_t)(eol - p) + 1;
		/* the session layer's own goodbye to /quit is its last line */
		if (llen == 3 && memcmp(eol - 4, "Bye", 3) == 0 && i == n)
			continue;
		j = json_loadb(eol - 1 - llen, llen, 0, NULL);
		if (j == NULL || !json_is_object(j))
			abort();
		json_decref(j);
	}
	if (trace && n > 0)
		fprintf(stderr, "[session %d]\n%.*s", (int)(s - sess), (int)n, p);
	s->out_off = s->out_len = 0;
	full = s->out_full;
	pthread_mutex_unlock(&s->out_lock);

	/* the connection layer would now drop it: output queue full */
	if (full && atomic_load(&s->open))
		sess_close(s);
}

static void
drain_all(void)
{
	int i;

	for (i = 0; i < NSESS; i++)
		drain(&sess[i]);
}

static void
step(const char *req, size_t len)
{
	unsigned char b = (unsigned char)req[0];
	struct session *s = &sess[b % NSESS];
	char *line;

	if ((b & 0xf0) == 0xf0) {
		if (atomic_load(&s->open))
			sess_close(s);
		drain_all();
		return;
	}
	if (!atomic_load(&s->open)) {
		sess_open(s);
		drain_all();
	}
	/* an exact-size copy, NUL-terminated at [len] as the framer leaves it */
	len--;
	if ((line = malloc(len + 1)) == NULL)
		abort();
	memcpy(line, req + 1, len);
	line[len] = '\0';
	service_chat.line(s, line, len);
	free(line);
	/* /quit: "Bye" is flushed, then the connection closes */
	if (s->closing) {
		drain(s);
		if (atomic_load(&s->open))
			sess_close(s);
	}
	drain_all();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char who[256];
	int i;

	for (i = 0; i < NSESS; i++) {
		sess_open(&sess[i]);
		drain_all();
	}
	fake_lines(data, size, step);
	for (i = 0; i < NSESS; i++) {
		if (atomic_load(&sess[i].open))
			sess_close(&sess[i]);
		drain(&sess[i]);
	}
	/* everyone left: no room may still list members */
	if (chan_rooms(who, sizeof(who)) != 0) {
		fprintf(stderr, "fuzz_chat: rooms left after every session closed: %s\n",
		    who);
		abort();
	}
	return 0;
}
