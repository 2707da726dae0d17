#ifndef FORKD_CHAT_PAGE_H
#define FORKD_CHAT_PAGE_H

struct session;
struct http_request;

/* The chat service's http callback: the page at / and /ROOM/, and its
 * script, style and icon. */
void	chat_page_http(struct session *, const struct http_request *);

#endif
