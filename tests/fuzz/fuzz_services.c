/*
 * libFuzzer harness for every service's line handler (services[] in
 * service.c: echo, calc, chat, stats), through the same fake sessions as
 * fuzz_chat.c: built by hand, no sockets, no epoll (epfd is -1), one
 * session per service in worker slot 0 of a real scoreboard and channel
 * layer (started here as chat's worker_init would, but without delivery to
 * other workers: there are none).
 *
 * Input: lines separated by '\n'; a '\r' before the '\n' is dropped and a
 * line is cut at max_line, as the framer hands lines over.  The first byte
 * of a line picks the service (byte % number of services with a line
 * handler: metrics has none); the rest is the request, passed to ->line in
 * an exact-size buffer, NUL-terminated at [len] as the framer leaves it.
 * After every request the service's reply is taken from the session's
 * output queue and checked:
 *   every service  whole lines, each ending in "\r\n", no bare '\n', never
 *                  more than max_output queued
 *   echo           exactly prefix + request + "\r\n": the bytes pass through
 *                  unchanged, NULs, lone CRs and invalid UTF-8 included
 *   calc           exactly one line, no CR inside (it quotes bad input with
 *                  control bytes as '?')
 *   stats          "STAT name value" lines and "END", or one "ERR " line, no
 *                  CR inside
 *   chat           a line with "Bye" exactly when the session is closing,
 *                  no CR inside (a member's control bytes reach the room
 *                  as '?')
 * A session that said Bye, or whose queue overflowed, is closed the way
 * the connection layer would close it, and opened again for its next line.
 * At the end every session is closed and freed, and no chat room may be
 * left.
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

#include "chan.h"
#include "config.h"
#include "conn.h"
#include "scoreboard.h"
#include "service.h"
#include "worker.h"

#include "fake_worker.h"

int	 LLVMFuzzerInitialize(int *, char ***);
int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define MAXSVC		16
#define ECHO_PREFIX	"Echo: "

static const char services_conf_text[] =
    "max_line = 1024;\n"
    "max_output = 65536;\n"	/* at least the stats reply's bound */
    "listeners = (\n"
    "  { address = \"127.0.0.1\"; port = 5002; service = \"echo\"; },\n"
    "  { address = \"127.0.0.1\"; port = 5003; service = \"stats\"; },\n"
    "  { address = \"127.0.0.1\"; port = 5004; service = \"calc\"; },\n"
    "  { address = \"127.0.0.1\"; port = 5005; service = \"chat\"; }\n"
    ");\n"
    "echo = { prefix = \"" ECHO_PREFIX "\"; };\n"
    "chat = { default_room = \"lobby\"; max_rooms = 4; max_members = 2; };\n";

static struct fk_config	*cfg;
static struct worker	 w;
static int		 nsvc;
static int		 line_svc[MAXSVC];	/* the services with a line handler */
static int		 nline;
static struct session	 sess[MAXSVC];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	cfg = fake_worker("fuzz_services", "fuzz-services.conf", services_conf_text,
	    &w, true);
	for (nsvc = 0; services[nsvc] != NULL; nsvc++) {
		if (nsvc == MAXSVC)
			abort();
		if (pthread_mutex_init(&sess[nsvc].out_lock, NULL) != 0)
			abort();
		sess[nsvc].fd = -1;
		if (services[nsvc]->line != NULL)
			line_svc[nline++] = nsvc;	/* metrics speaks HTTP only */
	}
	return 0;
}

static void
sess_open(int i)
{
	fake_session_open(&w, &sess[i], services[i], cfg->service_conf[i], 41000 + i);
}

static void
sess_close(int i)
{
	fake_session_close(&sess[i]);
}

static void
fail(const char *svc, const char *what, const char *p, size_t n)
{
	fprintf(stderr, "fuzz_services: %s: %s; reply (%zu bytes): %.*s\n", svc, what,
	    n, (int)(n > 512 ? 512 : n), p);
	abort();
}

static bool
starts(const char *p, size_t n, const char *word)
{
	size_t k = strlen(word);

	return n >= k && memcmp(p, word, k) == 0;
}

/*
 * The replies to one request from session i (req/len; NULL when the queue
 * only holds what open() or another session sent): check them, empty the
 * queue, close the session if the connection layer would.
 */
static void
drain(int i, const char *req, size_t len)
{
	struct session *s = &sess[i];
	const char *name = services[i]->name, *p, *q, *end;
	size_t n, k, lines = 0;
	bool full, bye = false;

	pthread_mutex_lock(&s->out_lock);
	if (s->out_off > s->out_len || s->out_len > s->out_cap)
		abort();
	n = s->out_len - s->out_off;
	p = n > 0 ? s->out + s->out_off : "";
	full = s->out_full;
	if (n > (size_t)cfg->max_output)
		fail(name, "more than max_output queued", p, n);
	if (n > 0 && (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n'))
		fail(name, "output does not end in CRLF", p, n);

	if (req != NULL && strcmp(name, "echo") == 0) {
		k = strlen(ECHO_PREFIX);
		if (n != k + len + 2 || memcmp(p, ECHO_PREFIX, k) != 0 ||
		    memcmp(p + k, req, len) != 0)
			fail(name, "not prefix + the request's bytes + CRLF", p, n);
		goto done;
	}
	/* line by line; a '\r' inside a line only from echo */
	for (q = p, end = p + n; q < end; lines++) {
		const char *nl = memchr(q, '\n', (size_t)(end - q));
		size_t ll;

		if (nl == NULL || nl == q || nl[-1] != '\r')
			fail(name, "a bare LF or an unterminated line", p, n);
		ll = (size_t)(nl - 1 - q);
		if (memchr(q, '\r', ll) != NULL && strcmp(name, "echo") != 0)
			fail(name, "a CR inside a reply line", p, n);
		if (ll == 3 && memcmp(q, "Bye", 3) == 0)
			bye = true;
		if (req != NULL && strcmp(name, "stats") == 0 &&
		    !(starts(q, ll, "STAT ") || (ll == 3 && memcmp(q, "END", 3) == 0) ||
		    (lines == 0 && starts(q, ll, "ERR "))))
			fail(name, "neither STAT, END nor ERR", p, n);
		q = nl + 1;
	}
	if (req != NULL && strcmp(name, "calc") == 0 && lines != 1 && !full)
		fail(name, "not exactly one reply line", p, n);
	if (req != NULL && strcmp(name, "stats") == 0 && !full && !starts(p, n, "ERR ") &&
	    !(n >= 5 && memcmp(p + n - 5, "END\r\n", 5) == 0))
		fail(name, "STAT lines without END", p, n);
	if (bye != s->closing && strcmp(name, "chat") == 0 && req != NULL)
		fail(name, "Bye and closing disagree", p, n);
done:
	s->out_off = s->out_len = 0;
	pthread_mutex_unlock(&s->out_lock);

	/* the connection layer would now close it: Bye sent, or queue full */
	if ((full || s->closing || atomic_load(&s->kill) != KILL_NONE) &&
	    atomic_load(&s->open))
		sess_close(i);
}

static void
drain_others(int except)
{
	int i;

	for (i = 0; i < nsvc; i++)
		if (i != except)
			drain(i, NULL, 0);
}

static void
step(const char *in, size_t len)
{
	int i = line_svc[(unsigned char)in[0] % (unsigned)nline];
	char *line;

	if (!atomic_load(&sess[i].open)) {
		sess_open(i);
		drain(i, NULL, 0);
	}
	/* the framer's view: without the byte that chose the service, without
	 * a CR before the LF, at most max_line bytes */
	in++;
	len--;
	if (len > 0 && in[len - 1] == '\r')
		len--;
	if (len > (size_t)cfg->max_line)
		len = (size_t)cfg->max_line;
	if ((line = malloc(len + 1)) == NULL)
		abort();
	memcpy(line, in, len);
	line[len] = '\0';
	services[i]->line(&sess[i], line, len);
	/* a handler may write into its line, but only up to line[len] */
	drain(i, in, len);
	free(line);
	drain_others(i);	/* chat: what the room heard */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char who[256];
	int i;

	for (i = 0; i < nsvc; i++) {
		sess_open(i);
		drain(i, NULL, 0);
	}
	fake_lines(data, size, step);
	for (i = 0; i < nsvc; i++) {
		if (atomic_load(&sess[i].open))
			sess_close(i);
	}
	if (chan_rooms(who, sizeof(who)) != 0) {
		fprintf(stderr, "fuzz_services: rooms left after every session closed: %s\n",
		    who);
		abort();
	}
	return 0;
}
