/*
 * HTTP/1.x request heads, parsed incrementally (Debian's libhttp-parser),
 * bounded in size; shared by the websocket codec (its Upgrade handshake, and
 * plain GETs on a websocket listener) and the http codec (metrics).
 */
#ifndef FORKD_HTTP_H
#define FORKD_HTTP_H

#include <stdbool.h>
#include <stddef.h>

struct session;

#define HTTP_MAX_HEADERS	64

struct http_header {
	char	*name;		/* as sent; compare case-insensitively */
	char	*value;		/* leading and trailing blanks removed */
};

/* One request head, complete. Strings point into the parser's buffer. */
struct http_request {
	const char		*method;	/* "GET", "HEAD", ... */
	char			*target;	/* as sent: "/websock1/?x=1" */
	char			*path;		/* target up to '?' */
	int			 major, minor;
	bool			 keep_alive;	/* by version and Connection */
	bool			 upgrade;	/* Connection: upgrade + Upgrade: present */
	unsigned long long	 content_length; /* 0 when none */
	bool			 chunked;	/* Transfer-Encoding: chunked */
	size_t			 nheaders;
	struct http_header	 headers[HTTP_MAX_HEADERS];
};

struct http_parser_state;	/* opaque */

/* A parser for one connection's request heads, max_head bytes at most. */
struct http_parser_state *http_head_new(size_t max_head);
void		 http_head_free(struct http_parser_state *);
/* Ready for the next request on the same connection (keep-alive). */
void		 http_head_reset(struct http_parser_state *);
/* Bytes of the current head taken so far (0: none yet). */
size_t		 http_head_pending(const struct http_parser_state *);

/*
 * Feed bytes.  Returns:
 *    0   the head is not complete yet; every byte was taken
 *    1   the head is complete: *req is filled (valid until the next reset or
 *        feed) and *used says how many bytes of data belonged to it; the
 *        rest is the next request (pipelining) or, after an Upgrade, frames
 *   <0   -STATUS: the request is bad; answer with that status and close
 *        (-400 malformed, -431 head larger than max_head, -505 not HTTP/1.x,
 *        -413 a body (Content-Length), -501 a chunked one: no request
 *        forkd serves has one)
 */
int		 http_head_feed(struct http_parser_state *, const char *data,
		    size_t n, size_t *used, struct http_request **req);

/* The value of a header, case-insensitive name; NULL when absent. */
const char	*http_header(const struct http_request *, const char *name);
/* Does a comma-separated header (Connection, Upgrade) hold this token? */
bool		 http_header_has_token(const struct http_request *, const char *name,
		    const char *token);
/* "Not Found" for 404, ... ("Unknown" for anything else). */
const char	*http_reason(int status);

/*
 * Queue a whole response on the session with conn_write: status line, Date,
 * Server, Content-Length, Content-Type (when ctype != NULL), the extra
 * header lines (each ending "\r\n"; may be NULL), Connection: close when
 * !keep_alive, then the body unless head_only.  false when over max_output.
 */
bool		 http_respond(struct session *, int status, const char *ctype,
		    const char *extra_headers, const void *body, size_t len,
		    bool head_only, bool keep_alive);

#endif
