/*
 * libFuzzer harness for HTTP request heads (http.c over libhttp-parser).
 *
 * Input layout:
 *   byte 0    max_head: 16 + 16 * byte0 (16..4096)
 *   byte 1    largest chunk (1..256)
 *   byte 2    seed for the chunk sizes
 *   rest      the bytes a client sends (several pipelined heads)
 *
 * The stream is fed in chunks of input-chosen sizes, each in an exact-size
 * heap copy, going on after each complete head with the rest of the chunk
 * (pipelining), until the parser reports an error.  Every complete head is
 * checked (its strings are NUL-terminated, the path is the target up to
 * '?', a header looked up by name is found) and answered with http_respond
 * into a bounded buffer.  Then the stream is fed again in one piece: the
 * heads and the final status must be the same.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "http.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define MAX_HEADS	64

/* http_respond's output goes here (the harness links http.o alone) */
static char out[8192];
static size_t nout;

bool
conn_write(struct session *c, const void *buf, size_t n)
{
	(void)c;
	if (n > sizeof(out) - nout)
		return false;
	memcpy(out + nout, buf, n);
	nout += n;
	return true;
}

struct result {
	size_t	 nheads;
	size_t	 used[MAX_HEADS];	/* stream offset where each head ended */
	size_t	 nheaders[MAX_HEADS];
	int	 last;			/* 0 or -status */
};

static void
check_head(const struct http_request *r)
{
	size_t i, plen = strlen(r->path);

	if (r->method == NULL || strlen(r->target) < plen ||
	    memcmp(r->target, r->path, plen) != 0 ||
	    (r->target[plen] != '\0' && r->target[plen] != '?'))
		abort();
	if (r->major != 1 || r->nheaders > HTTP_MAX_HEADERS)
		abort();
	for (i = 0; i < r->nheaders; i++) {
		const char *v = r->headers[i].value;
		size_t vl = strlen(v);

		if (strlen(r->headers[i].name) == 0)
			abort();
		if (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			abort();
		if (http_header(r, r->headers[i].name) == NULL)
			abort();
	}
	(void)http_header_has_token(r, "Connection", "upgrade");
	nout = 0;
	(void)http_respond(NULL, 200, "text/plain", "X-A: b\r\n", r->target,
	    strlen(r->target), false, r->keep_alive);
}

static void
run(const uint8_t *s, size_t size, size_t max_head, size_t maxchunk,
    unsigned seed, struct result *res)
{
	struct http_parser_state *st = http_head_new(max_head);
	size_t off = 0;

	if (st == NULL)
		abort();
	memset(res, 0, sizeof(*res));
	while (off < size && res->last == 0) {
		size_t n = maxchunk == 0 ? size - off : 1 + (seed % maxchunk);
		size_t done = 0;
		char *chunk;

		seed = seed * 1103515245u + 12345u;
		if (n > size - off)
			n = size - off;
		chunk = malloc(n);
		if (chunk == NULL)
			abort();
		memcpy(chunk, s + off, n);
		while (done < n) {
			struct http_request *r;
			size_t used;
			int rc = http_head_feed(st, chunk + done, n - done, &used, &r);

			if (used > n - done)
				abort();
			done += used;
			if (rc < 0) {
				if (rc != -400 && rc != -413 && rc != -431 && rc != -501 &&
				    rc != -505)
					abort();
				res->last = rc;
				break;
			}
			if (rc == 0) {
				if (done != n)
					abort();
				break;
			}
			check_head(r);
			if (res->nheads < MAX_HEADS) {
				res->used[res->nheads] = off + done;
				res->nheaders[res->nheads] = r->nheaders;
			}
			res->nheads++;
		}
		free(chunk);
		off += n;
	}
	http_head_free(st);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct result a, b;
	size_t max_head, maxchunk;

	if (size < 3)
		return 0;
	max_head = 16 + 16 * (size_t)data[0];
	maxchunk = 1 + (size_t)data[1];
	run(data + 3, size - 3, max_head, maxchunk, data[2], &a);
	run(data + 3, size - 3, max_head, 0, 0, &b);
	if (a.nheads != b.nheads || a.last != b.last ||
	    memcmp(a.used, b.used, sizeof(a.used)) != 0 ||
	    memcmp(a.nheaders, b.nheaders, sizeof(a.nheaders)) != 0)
		abort();
	return 0;
}
