/*
 * The chat page: what a browser gets from a plain GET on a chat listener
 * that speaks WebSocket.  The page, its script and its style are built in
 * (src/web/, turned into web_assets.h at build time), so forkd serves them
 * without any file or network access.  The page's script then opens a
 * WebSocket on the same listener and path: the path names the room.
 *
 * The Content-Security-Policy allows nothing but this listener's own
 * script, style and icon, and WebSocket connections: a member's text can
 * never run as code even if the page had a bug that made it markup.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "chat_event.h"
#include "chat_page.h"
#include "http.h"
#include "service.h"
#include "web_assets.h"

#define SECURITY_HEADERS \
	"Content-Security-Policy: default-src 'none'; script-src 'self'; " \
	    "style-src 'self'; img-src 'self'; connect-src 'self' ws: wss:; " \
	    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n" \
	"X-Content-Type-Options: nosniff\r\n" \
	"Referrer-Policy: no-referrer\r\n" \
	"Cache-Control: no-cache\r\n"

static const struct asset {
	const char		*path;
	const char		*ctype;
	const unsigned char	*body;
	const unsigned int	*len;
} assets[] = {
	{ "/chat.js", "text/javascript; charset=utf-8", chat_js, &chat_js_len },
	{ "/chat.css", "text/css; charset=utf-8", chat_css, &chat_css_len },
	{ "/favicon.svg", "image/svg+xml", favicon_svg, &favicon_svg_len },
};

/* "/", "/ROOM" or "/ROOM/": a path the page is served at */
static bool
room_path(const char *path)
{
	size_t n;

	if (path[0] != '/')
		return false;
	path++;
	n = strcspn(path, "/");
	if (n == 0)
		return path[0] == '\0';
	return chat_valid_name(path, n) && (path[n] == '\0' ||
	    (path[n] == '/' && path[n + 1] == '\0'));
}

void
chat_page_http(struct session *s, const struct http_request *req)
{
	static const char not_found[] = "not found: the chat page is at / or /ROOM/\n";
	static const char not_allowed[] = "only GET and HEAD are served here\n";
	bool head = strcmp(req->method, "HEAD") == 0;
	size_t i;

	if (!head && strcmp(req->method, "GET") != 0) {
		http_respond(s, 405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n",
		    not_allowed, sizeof(not_allowed) - 1, false, req->keep_alive);
		return;
	}
	for (i = 0; i < sizeof(assets) / sizeof(assets[0]); i++) {
		if (strcmp(req->path, assets[i].path) == 0) {
			http_respond(s, 200, assets[i].ctype, SECURITY_HEADERS, assets[i].body,
			    *assets[i].len, head, req->keep_alive);
			return;
		}
	}
	if (room_path(req->path)) {
		http_respond(s, 200, "text/html; charset=utf-8", SECURITY_HEADERS,
		    index_html, index_html_len, head, req->keep_alive);
		return;
	}
	http_respond(s, 404, "text/plain; charset=utf-8", SECURITY_HEADERS, not_found,
	    sizeof(not_found) - 1, head, req->keep_alive);
}
