/*
 * HTTP/1.x request heads over libhttp-parser.
 *
 * The parser hands out pieces of the URL and of each header as it meets
 * them, and a piece may be cut where one read ends and the next begins.  So
 * every byte of the head is first copied into one buffer of max_head bytes
 * and the parser runs over that copy: the pieces of one string are then
 * contiguous, each is remembered as an offset and a length, and once the head
 * is complete they are cut out in place with NULs (the byte after each piece
 * is a separator: ' ', ':', CR, LF or a blank).  A header folded over several
 * lines (obsolete) gives pieces with a gap between them and is refused.
 */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <http_parser.h>

#include "codec.h"
#include "http.h"

enum last_cb { CB_NONE, CB_FIELD, CB_VALUE };

struct span {
	size_t		 off, len;
};

struct http_parser_state {
	http_parser		 p;
	size_t			 max;
	char			*buf;		/* max + 1 bytes: the head */
	char			*pathbuf;	/* max + 1 bytes: target up to '?' */
	size_t			 len;		/* bytes of buf in use */
	int			 status;	/* error found by a callback */
	bool			 done;
	bool			 too_many;	/* more than HTTP_MAX_HEADERS */
	enum last_cb		 last;
	struct span		 url;
	struct span		 field[HTTP_MAX_HEADERS];
	struct span		 value[HTTP_MAX_HEADERS];
	size_t			 nfields;
	struct http_request	 req;
};

static int	on_url(http_parser *, const char *, size_t);
static int	on_header_field(http_parser *, const char *, size_t);
static int	on_header_value(http_parser *, const char *, size_t);
static int	on_headers_complete(http_parser *);
static int	on_message_complete(http_parser *);

static const http_parser_settings settings = {
	.on_url = on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_message_complete = on_message_complete,
};

/* Extend a span by the piece at..at+n of st->buf; false when not adjacent. */
static bool
span_add(struct http_parser_state *st, struct span *s, const char *at, size_t n)
{
	size_t off = (size_t)(at - st->buf);

	if (s->len == 0) {
		s->off = off;
		s->len = n;
		return true;
	}
	if (s->off + s->len != off)
		return false;
	s->len += n;
	return true;
}

static int
on_url(http_parser *p, const char *at, size_t n)
{
	struct http_parser_state *st = p->data;

	if (n > 0 && !span_add(st, &st->url, at, n)) {
		st->status = 400;
		return -1;
	}
	return 0;
}

static int
on_header_field(http_parser *p, const char *at, size_t n)
{
	struct http_parser_state *st = p->data;
	const struct span *f = &st->field[st->nfields > 0 ? st->nfields - 1 : 0];

	if (n == 0)
		return 0;
	/*
	 * A piece that does not continue the last name starts the next one
	 * (a header with an empty value has no value callback between).
	 */
	if (st->last != CB_FIELD || f->off + f->len != (size_t)(at - st->buf)) {
		if (st->nfields == HTTP_MAX_HEADERS) {
			/* told at the end of the head, after any other error */
			st->too_many = true;
			st->last = CB_NONE;
			return 0;
		}
		st->field[st->nfields].len = 0;
		st->value[st->nfields].len = 0;
		st->nfields++;
		st->last = CB_FIELD;
	}
	if (!span_add(st, &st->field[st->nfields - 1], at, n)) {
		st->status = 400;
		return -1;
	}
	return 0;
}

static int
on_header_value(http_parser *p, const char *at, size_t n)
{
	struct http_parser_state *st = p->data;

	if (n == 0 || st->too_many)
		return 0;
	if (st->nfields == 0) {
		st->status = 400;
		return -1;
	}
	st->last = CB_VALUE;
	/* a gap between two pieces of one value: a folded line */
	if (!span_add(st, &st->value[st->nfields - 1], at, n)) {
		st->status = 400;
		return -1;
	}
	return 0;
}

/* RFC 9110 token characters: the parser lets a blank into a field name */
static bool
is_token(const char *s, size_t n)
{
	static const char tchar[] = "!#$%&'*+-.^_`|~";
	size_t i;

	if (n == 0)
		return false;
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		    (ch >= 'A' && ch <= 'Z') || (ch != '\0' && strchr(tchar, ch) != NULL)))
			return false;
	}
	return true;
}

static int
on_headers_complete(http_parser *p)
{
	struct http_parser_state *st = p->data;
	size_t i;

	for (i = 0; i < st->nfields; i++) {
		if (!is_token(st->buf + st->field[i].off, st->field[i].len)) {
			st->status = 400;
			return -1;
		}
	}
	if (st->too_many) {
		st->status = 431;
		return -1;
	}
	if (p->http_major != 1) {
		st->status = 505;
		return -1;
	}
	/* no request forkd serves has a body */
	if ((p->flags & F_CHUNKED) != 0) {
		st->status = 501;
		return -1;
	}
	if (p->content_length > 0 && p->content_length != ULLONG_MAX) {
		st->status = 413;
		return -1;
	}
	/* no body: the message ends with its head */
	return 1;
}

static int
on_message_complete(http_parser *p)
{
	struct http_parser_state *st = p->data;

	st->done = true;
	/* stop right after this head: what follows is not ours to parse */
	http_parser_pause(p, 1);
	return 0;
}

struct http_parser_state *
http_head_new(size_t max_head)
{
	struct http_parser_state *st;

	if (max_head == 0)
		return NULL;
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return NULL;
	st->max = max_head;
	st->buf = malloc(2 * (max_head + 1));
	if (st->buf == NULL) {
		free(st);
		return NULL;
	}
	st->pathbuf = st->buf + max_head + 1;
	http_head_reset(st);
	return st;
}

void
http_head_free(struct http_parser_state *st)
{
	if (st == NULL)
		return;
	free(st->buf);
	free(st);
}

void
http_head_reset(struct http_parser_state *st)
{
	http_parser_init(&st->p, HTTP_REQUEST);
	st->p.data = st;
	st->len = 0;
	st->status = 0;
	st->done = false;
	st->too_many = false;
	st->last = CB_NONE;
	st->url.len = 0;
	st->nfields = 0;
}

size_t
http_head_pending(const struct http_parser_state *st)
{
	return st->done ? 0 : st->len;
}

static char *
cut(struct http_parser_state *st, const struct span *s)
{
	char *str = st->buf + s->off;
	size_t n = s->len;

	if (n == 0)
		return (char *)"";
	while (n > 0 && (str[n - 1] == ' ' || str[n - 1] == '\t'))
		n--;
	str[n] = '\0';
	return str;
}

/* The head is complete: cut the strings out and fill st->req. */
static void
fill(struct http_parser_state *st)
{
	struct http_request *r = &st->req;
	size_t i, plen;

	memset(r, 0, offsetof(struct http_request, headers));
	r->method = http_method_str((enum http_method)st->p.method);
	r->major = st->p.http_major;
	r->minor = st->p.http_minor;
	r->keep_alive = http_should_keep_alive(&st->p) != 0;
	r->content_length = 0;
	r->chunked = false;
	for (i = 0; i < st->nfields; i++) {
		r->headers[i].name = cut(st, &st->field[i]);
		r->headers[i].value = cut(st, &st->value[i]);
	}
	r->nheaders = st->nfields;
	r->target = cut(st, &st->url);
	plen = strcspn(r->target, "?");
	memcpy(st->pathbuf, r->target, plen);
	st->pathbuf[plen] = '\0';
	r->path = st->pathbuf;
	r->upgrade = http_header(r, "Upgrade") != NULL &&
	    http_header_has_token(r, "Connection", "upgrade");
}

int
http_head_feed(struct http_parser_state *st, const char *data, size_t n,
    size_t *used, struct http_request **req)
{
	size_t take, start, got;
	enum http_errno err;

	*used = 0;
	*req = NULL;
	if (st->done)
		http_head_reset(st);
	if (st->status != 0)
		return -st->status;
	if (n == 0)
		return 0;
	take = st->max - st->len;
	if (take > n)
		take = n;
	if (take == 0) {
		st->status = 431;
		return -431;
	}
	start = st->len;
	memcpy(st->buf + start, data, take);
	st->len += take;
	got = http_parser_execute(&st->p, &settings, st->buf + start, take);
	err = HTTP_PARSER_ERRNO(&st->p);
	if (st->done) {
		/* the bytes after the head are not part of it */
		st->len = start + got;
		fill(st);
		*used = got;
		*req = &st->req;
		return 1;
	}
	if (err != HPE_OK) {
		if (st->status == 0)
			st->status = err == HPE_HEADER_OVERFLOW ? 431 : 400;
		return -st->status;
	}
	if (take < n) {
		/* max_head bytes and still no end of the head */
		st->status = 431;
		return -431;
	}
	*used = take;
	return 0;
}

const char *
http_header(const struct http_request *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->nheaders; i++)
		if (strcasecmp(r->headers[i].name, name) == 0)
			return r->headers[i].value;
	return NULL;
}

bool
http_header_has_token(const struct http_request *r, const char *name,
    const char *token)
{
	size_t i, tlen = strlen(token);

	/* a header may be sent more than once: each counts */
	for (i = 0; i < r->nheaders; i++) {
		const char *v = r->headers[i].value;

		if (strcasecmp(r->headers[i].name, name) != 0)
			continue;
		while (*v != '\0') {
			size_t len;

			v += strspn(v, " \t,");
			len = strcspn(v, ",");
			/* trailing blanks of this element */
			while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
				len--;
			if (len == tlen && strncasecmp(v, token, tlen) == 0)
				return true;
			v += strcspn(v, ",");
		}
	}
	return false;
}

const char *
http_reason(int status)
{
	switch (status) {
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 426: return "Upgrade Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

bool
http_respond(struct session *c, int status, const char *ctype,
    const char *extra_headers, const void *body, size_t len, bool head_only,
    bool keep_alive)
{
	char head[1024], date[64];
	struct tm tm;
	time_t now = time(NULL);
	int n;

	if (gmtime_r(&now, &tm) == NULL ||
	    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
		date[0] = '\0';
	n = snprintf(head, sizeof(head),
	    "HTTP/1.1 %d %s\r\n"
	    "Date: %s\r\n"
	    "Server: forkd/%s\r\n"
	    "Content-Length: %zu\r\n"
	    "%s%s%s"
	    "%s",
	    status, http_reason(status), date, PACKAGE_VERSION, len,
	    ctype != NULL ? "Content-Type: " : "", ctype != NULL ? ctype : "",
	    ctype != NULL ? "\r\n" : "",
	    keep_alive ? "" : "Connection: close\r\n");
	if (n < 0 || (size_t)n >= sizeof(head))
		return false;
	if (!conn_write(c, head, (size_t)n))
		return false;
	if (extra_headers != NULL && extra_headers[0] != '\0' &&
	    !conn_write(c, extra_headers, strlen(extra_headers)))
		return false;
	if (!conn_write(c, "\r\n", 2))
		return false;
	if (!head_only && len > 0 && !conn_write(c, body, len))
		return false;
	return true;
}
