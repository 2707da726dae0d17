/*
 * libFuzzer harness for what the Redis channel layer reads back from Redis
 * (redis_proto.c): the input is what a server sent, fed through hiredis'
 * reader as the layer's connections do, and every reply is taken as a
 * subscriber push, a published line's envelope, a /who and a /rooms list
 * and a script verdict.  The raw input is also parsed as an envelope and
 * its first line as an address.  Checks: lists stay inside their buffer
 * and end in a NUL, an envelope that parses names a valid room and a line
 * inside the input, and formatting what was parsed parses back the same.
 *
 *   tests/fuzz/run 60          (builds and runs every harness)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis_proto.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void
envelope(const char *buf, size_t len)
{
	struct rp_msg m, again;
	char *out;
	int n;

	if (rp_msg_parse(buf, len, &m) != 0)
		return;
	if (m.line < buf || m.line + m.len != buf + len || strlen(m.room) == 0)
		abort();
	out = malloc(len + 64);
	if (out == NULL)
		return;
	n = rp_msg_format(out, len + 64, m.owner, m.seq, m.room, m.line, m.len);
	if (n < 0 || rp_msg_parse(out, (size_t)n, &again) != 0 ||
	    strcmp(again.owner, m.owner) != 0 || again.seq != m.seq ||
	    strcmp(again.room, m.room) != 0 || again.len != m.len ||
	    memcmp(again.line, m.line, m.len) != 0)
		abort();
	free(out);
}

static void
lists(const redisReply *r)
{
	char buf[128];
	const char *p;
	size_t len;
	long long v;

	memset(buf, 'x', sizeof(buf));
	(void)rp_who(r, buf, sizeof(buf));
	if (memchr(buf, '\0', sizeof(buf)) == NULL)
		abort();
	memset(buf, 'x', sizeof(buf));
	(void)rp_rooms(r, buf, sizeof(buf));
	if (memchr(buf, '\0', sizeof(buf)) == NULL)
		abort();
	(void)rp_reply_int(r, &v);
	if (rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_MESSAGE)
		envelope(p, len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	redisReader *rd;
	void *reply;
	char line[512];
	struct rp_addr a;
	char err[200];
	size_t n;
	int i;

	envelope((const char *)data, size);

	n = 0;
	while (n < size && n < sizeof(line) - 1 && data[n] != '\n' && data[n] != '\0') {
		line[n] = (char)data[n];
		n++;
	}
	line[n] = '\0';
	if (rp_parse_address(line, &a, err, sizeof(err)) == 0 && !a.is_unix &&
	    (a.port < 1 || a.port > 65535 || a.host[0] == '\0'))
		abort();
	(void)rp_valid_prefix(line);

	rd = redisReaderCreate();
	if (rd == NULL)
		return 0;
	rp_limit_reader(rd);	/* as every connection of the Redis layer has */
	if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
		for (i = 0; i < 64; i++) {
			reply = NULL;
			if (redisReaderGetReply(rd, &reply) != REDIS_OK || reply == NULL)
				break;
			lists(reply);
			freeReplyObject(reply);
		}
	}
	redisReaderFree(rd);
	return 0;
}
