/*
 * libFuzzer harness for the state a handover brings (conn_adopt): the bytes
 * another worker wrote with conn_save, read back in the worker that adopts
 * the session.  They come from a forkd process, but a binary of another
 * version, a torn record or a bug on the writing side must never be more
 * than a refused session: every length is checked against what is left
 * and against the limits (max_line, the codec's and the service's part),
 * the listener must be one of ours, the service must accept its part.
 *
 * Input: the state as is.  An accepted session is forgotten again the way
 * the old worker forgets one it handed over (conn_handed, moved), which
 * frees everything it holds and closes its socket; either way no
 * descriptor and no memory may be left behind.
 *
 *   tests/fuzz/run 60          (builds and runs every harness)
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "iplimit.h"
#include "scoreboard.h"
#include "worker.h"

#include "fake_worker.h"

static const char conf_text[] =
    "max_line = 256;\n"
    "max_connections_per_ip = 4;\n"
    "listeners = (\n"
    "  { address = \"127.0.0.1\"; port = 5002; service = \"echo\"; },\n"
    "  { address = \"127.0.0.1\"; port = 5003; service = \"echo\"; protocol = \"chunk\"; },\n"
    "  { address = \"127.0.0.1\"; port = 7000; service = \"chat\"; },\n"
    "  { address = \"127.0.0.1\"; port = 7001; service = \"echo\"; protocol = \"websocket\"; }\n"
    ");\n";

static struct worker W;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct session *c;
	char why[128], *tail;
	size_t tlen;
	uint64_t mark;
	int sv[2];

	if (!ready) {
		fake_worker("fuzz_handover", "fuzz.conf", conf_text, &W, true);
		if (iplimit_create() != 0)
			abort();
		W.conns_cap = 256;
		if ((W.conns = calloc(W.conns_cap, sizeof(*W.conns))) == NULL)
			abort();
		ready = true;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		abort();
	why[0] = '\0';
	c = conn_adopt(&W, sv[0], (const char *)data, size, &mark, why, sizeof(why));
	if (c == NULL) {
		if (why[0] == '\0')
			abort();	/* a refusal always says why */
		close(sv[0]);
	} else {
		if (c->fd != sv[0] || !atomic_load(&c->open))
			abort();
		if (mark != 0)
			conn_tail(c, "x\r\n", 3);
		conn_handed(c, true, 0, &tail, &tlen);
		free(tail);
		if (atomic_load(&c->open) || c->fd != -1)
			abort();
	}
	close(sv[1]);
	return 0;
}
