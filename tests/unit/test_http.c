/* HTTP request heads: whole, in pieces, pipelined, bounded; and responses. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "codec.h"
#include "http.h"

/* http_respond writes through conn_write: collect what it sends */
static char sent[4096];
static size_t nsent;

bool
conn_write(struct session *c, const void *buf, size_t n)
{
	(void)c;
	if (nsent + n >= sizeof(sent))
		return false;
	memcpy(sent + nsent, buf, n);
	nsent += n;
	sent[nsent] = '\0';
	return true;
}

static int
feed_all(struct http_parser_state *st, const char *text, size_t *used,
    struct http_request **req)
{
	return http_head_feed(st, text, strlen(text), used, req);
}

static void
test_whole(void)
{
	struct http_parser_state *st = http_head_new(1024);
	struct http_request *r;
	size_t used;
	const char *text = "GET /chat/?room=a HTTP/1.1\r\n"
	    "Host: 127.0.0.1:8080\r\n"
	    "Upgrade: websocket\r\n"
	    "Connection: keep-alive, Upgrade\r\n"
	    "X-Blank:\r\n"
	    "X-Spaces:   a b   \r\n"
	    "\r\n"
	    "NEXT";
	int rc = feed_all(st, text, &used, &r);

	CHECK(rc == 1, "rc %d", rc);
	CHECK(used == strlen(text) - 4, "used %zu", used);
	CHECK(strcmp(r->method, "GET") == 0, "method %s", r->method);
	CHECK(strcmp(r->target, "/chat/?room=a") == 0, "target %s", r->target);
	CHECK(strcmp(r->path, "/chat/") == 0, "path %s", r->path);
	CHECK(r->major == 1 && r->minor == 1, "version %d.%d", r->major, r->minor);
	CHECK(r->keep_alive, "keep-alive");
	CHECK(r->upgrade, "upgrade");
	CHECK(r->nheaders == 5, "%zu headers", r->nheaders);
	CHECK(strcmp(http_header(r, "host"), "127.0.0.1:8080") == 0, "host");
	CHECK(strcmp(http_header(r, "X-BLANK"), "") == 0, "blank value");
	CHECK(strcmp(http_header(r, "x-spaces"), "a b") == 0, "[%s]",
	    http_header(r, "x-spaces"));
	CHECK(http_header(r, "Origin") == NULL, "absent");
	CHECK(http_header_has_token(r, "Connection", "upgrade"), "token");
	CHECK(http_header_has_token(r, "connection", "KEEP-ALIVE"), "token 2");
	CHECK(!http_header_has_token(r, "Connection", "close"), "no token");
	CHECK(!http_header_has_token(r, "Connection", "keep"), "prefix only");
	CHECK(http_head_pending(st) == 0, "nothing pending after a head");
	http_head_free(st);
}

static void
test_pieces(void)
{
	struct http_parser_state *st = http_head_new(1024);
	struct http_request *r = NULL;
	const char *text = "GET /x HTTP/1.0\r\nHost: h\r\nUser-Agent: t/1\r\n\r\n";
	size_t i, used, n = strlen(text);
	int rc = 0;

	/* one byte at a time: every piece is cut somewhere */
	for (i = 0; i < n; i++) {
		rc = http_head_feed(st, text + i, 1, &used, &r);
		if (rc != 0)
			break;
		CHECK(used == 1, "used %zu at %zu", used, i);
		CHECK(http_head_pending(st) == i + 1, "pending at %zu", i);
	}
	CHECK(rc == 1 && i == n - 1, "rc %d at %zu", rc, i);
	CHECK(r != NULL && strcmp(http_header(r, "User-Agent"), "t/1") == 0, "ua");
	CHECK(r != NULL && strcmp(r->path, "/x") == 0, "path");
	CHECK(r != NULL && !r->keep_alive, "1.0 is not kept alive");
	CHECK(r != NULL && !r->upgrade, "no upgrade");

	/* the next request after a reset; and Connection: close */
	http_head_reset(st);
	rc = feed_all(st, "HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n", &used, &r);
	CHECK(rc == 1 && strcmp(r->method, "HEAD") == 0, "rc %d", rc);
	CHECK(!r->keep_alive, "Connection: close");
	http_head_free(st);
}

static int
status_of(const char *text, size_t max)
{
	struct http_parser_state *st = http_head_new(max);
	struct http_request *r;
	size_t used;
	int rc = feed_all(st, text, &used, &r);

	/* an error sticks */
	if (rc < 0) {
		int again = feed_all(st, "\r\n", &used, &r);

		CHECK(again == rc, "error %d then %d", rc, again);
	}
	http_head_free(st);
	return rc;
}

static void
test_errors(void)
{
	char big[2048];
	int rc, i;

	CHECK((rc = status_of("GARBAGE\r\n\r\n", 1024)) == -400, "rc %d", rc);
	CHECK((rc = status_of("GET / HTTP/2.0\r\n\r\n", 1024)) == -505, "rc %d", rc);
	CHECK((rc = status_of("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
	    1024)) == -413, "rc %d", rc);
	CHECK((rc = status_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	    1024)) == -501, "rc %d", rc);
	CHECK((rc = status_of("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
	    1024)) == 1, "rc %d", rc);
	CHECK((rc = status_of("GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 1024)) == -400,
	    "folded header: rc %d", rc);
	CHECK((rc = status_of("GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", 1024)) == -400,
	    "rc %d", rc);

	/* max_head: exactly fits, one byte more does not */
	memset(big, 0, sizeof(big));
	strcpy(big, "GET / HTTP/1.1\r\nX: ");
	memset(big + strlen(big), 'a', 100);
	strcat(big, "\r\n\r\n");
	CHECK((rc = status_of(big, strlen(big))) == 1, "rc %d", rc);
	CHECK((rc = status_of(big, strlen(big) - 1)) == -431, "rc %d", rc);
	/* the limit holds across feeds too */
	{
		struct http_parser_state *st = http_head_new(64);
		struct http_request *r;
		size_t used, total = 0;

		rc = 0;
		for (i = 0; i < 100 && rc == 0; i++) {
			rc = feed_all(st, i == 0 ? "GET / HTTP/1.1\r\n" : "X: 1\r\n", &used, &r);
			total += used;
		}
		CHECK(rc == -431 && total <= 64, "rc %d after %zu bytes", rc, total);
		http_head_free(st);
	}
	/* too many headers */
	strcpy(big, "GET / HTTP/1.1\r\n");
	for (i = 0; i < HTTP_MAX_HEADERS + 1; i++)
		strcat(big, "A: b\r\n");
	strcat(big, "\r\n");
	CHECK((rc = status_of(big, sizeof(big))) == -431, "rc %d", rc);
}

static void
test_respond(void)
{
	nsent = 0;
	CHECK(http_respond(NULL, 426, "text/plain", "Sec-WebSocket-Version: 13\r\n",
	    "hint\n", 5, false, false), "respond");
	CHECK(strncmp(sent, "HTTP/1.1 426 Upgrade Required\r\n", 31) == 0, "%s", sent);
	CHECK(strstr(sent, "\r\nContent-Length: 5\r\n") != NULL, "%s", sent);
	CHECK(strstr(sent, "\r\nContent-Type: text/plain\r\n") != NULL, "%s", sent);
	CHECK(strstr(sent, "\r\nSec-WebSocket-Version: 13\r\n") != NULL, "%s", sent);
	CHECK(strstr(sent, "\r\nConnection: close\r\n") != NULL, "%s", sent);
	CHECK(strstr(sent, "\r\nDate: ") != NULL, "%s", sent);
	CHECK(nsent > 9 && strcmp(sent + nsent - 9, "\r\n\r\nhint\n") == 0, "%s", sent);

	nsent = 0;
	CHECK(http_respond(NULL, 200, NULL, NULL, "body", 4, true, true), "head");
	CHECK(strstr(sent, "Content-Length: 4\r\n") != NULL, "%s", sent);
	CHECK(strstr(sent, "Content-Type") == NULL, "%s", sent);
	CHECK(strstr(sent, "Connection: close") == NULL, "%s", sent);
	CHECK(strcmp(sent + nsent - 4, "\r\n\r\n") == 0, "no body for HEAD");
	CHECK(strcmp(http_reason(999), "Unknown") == 0, "unknown");
}

int
main(void)
{
	test_whole();
	test_pieces();
	test_errors();
	test_respond();
	return check_done();
}
