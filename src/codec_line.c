/*
 * The line codecs, both on the framer (framing.c):
 *
 *   line   a request is a line ending in "\n" or "\r\n" (telnet, nc)
 *   chunk  what arrived in one read is split at line ends, and a tail with
 *          no line end is a request too: for clients that send one message
 *          without a line end and wait for the answer
 *
 * Replies pass through as the service wrote them (lines ending "\r\n").
 */
#include <stddef.h>

#include "codec.h"
#include "conn.h"
#include "framing.h"

const char *const protocol_names[] = {
	[PROTO_LINE] = "line",
	[PROTO_CHUNK] = "chunk",
	[PROTO_WEBSOCKET] = "websocket",
	[PROTO_HTTP] = "http",
	NULL
};

static int
line_open(struct session *c)
{
	conn_begin(c);
	return 0;
}

static int
on_request(void *arg, char *req, size_t len)
{
	return conn_request(arg, req, len);
}

static int
line_input(struct session *c, char *data, size_t n)
{
	if (framer_feed(&c->in, data, n, on_request, c) < 0) {
		c->in_used = c->in.used;
		return -1;
	}
	return 0;
}

static int
chunk_input(struct session *c, char *data, size_t n)
{
	if (line_input(c, data, n) < 0)
		return -1;
	c->in_used = n;
	return framer_flush(&c->in, on_request, c);
}

const struct codec codec_line = {
	.name = "line",
	.open = line_open,
	.input = line_input,
	.can_hold = true,
};

const struct codec codec_chunk = {
	.name = "chunk",
	.open = line_open,
	.input = chunk_input,
	.can_hold = true,
};

const struct codec *
codec_for(int protocol)
{
	switch (protocol) {
	case PROTO_LINE:	return &codec_line;
	case PROTO_CHUNK:	return &codec_chunk;
	case PROTO_WEBSOCKET:	return &codec_websocket;
	case PROTO_HTTP:	return &codec_http;
	default:		return NULL;
	}
}
