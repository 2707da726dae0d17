/*
 * Codecs: the protocol a listener speaks, between the socket and the service.
 *
 *     socket -- conn.c (limits, timeouts, output queue, epoll parking)
 *                 \- codec of the listener: line | chunk | websocket | http
 *                      \- service: echo | calc | chat | stats | metrics
 *
 * A codec turns the bytes a client sent into requests (conn_request) and a
 * service's output into the bytes the client receives (conn_write).  It never
 * touches the socket: conn.c reads, writes, parks and closes.  Services never
 * see the codec; adding a protocol touches no service.
 *
 * Service output is a byte stream of lines, each ending in "\r\n", possibly
 * handed over in pieces (echo sends prefix, text and terminator apart).
 * Codecs that need message boundaries (websocket) cut it at "\r\n".
 */
#ifndef FORKD_CODEC_H
#define FORKD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"

enum fk_protocol {
	PROTO_LINE = 0,
	PROTO_CHUNK,
	PROTO_WEBSOCKET,
	PROTO_HTTP,
	PROTO_COUNT
};

struct codec {
	const char	*name;

	/* A client connected: set up c->cstate.  0, or -1 to refuse it. */
	int		(*open)(struct session *);
	/*
	 * Bytes from the socket (data may be modified in place).  Hand each
	 * complete request to conn_request(); write protocol replies (pongs,
	 * HTTP answers) with conn_write().  Return -1 to stop reading this
	 * batch: the session is closing (c->closing or a kill was requested),
	 * or, with can_hold, conn_request returned -1 because the request's
	 * work was offloaded (c->held): then set c->in_used to the bytes of
	 * data taken so far; conn.c keeps the rest and feeds it again later.
	 */
	int		(*input)(struct session *, char *data, size_t n);
	/* input stops where a request was offloaded (see above) */
	bool		 can_hold;
	/*
	 * Service output to wire bytes, with c->out_lock held: append with
	 * conn_write_locked().  false when the queue would pass max_output
	 * (the session is then dropped as too slow).  NULL: bytes pass as
	 * they are.
	 */
	bool		(*output)(struct session *, const char *buf, size_t n);
	/*
	 * The server ends the session for this reason (KILL_NONE: the service
	 * or the client asked to quit): queue the last words with conn_write
	 * (a line, a close frame).  NULL: the line codec's ERR lines.
	 */
	void		(*goodbye)(struct session *, enum conn_kill why);
	/*
	 * Deadlines of the codec's own (a request head that never completes,
	 * an unanswered ping), run by the owner of the session: the codec
	 * stores when it wants this call in c->tick_ms; the worker's sweep (a
	 * few times a second) kicks the session once that time has come.
	 * Returns a kill reason, or KILL_NONE.  NULL: none.
	 */
	enum conn_kill	(*tick)(struct session *, uint64_t now_ms);
	/* The session is gone: free c->cstate.  NULL: free() it. */
	void		(*close)(struct session *);
};

extern const struct codec codec_line, codec_chunk, codec_websocket, codec_http;
extern const char *const protocol_names[];	/* by enum fk_protocol, NULL-terminated */
/* The codec of a protocol; NULL when this build has none for it. */
const struct codec *codec_for(int protocol);

/*
 * For codecs, from the owner of the session.
 *
 * conn_request: one complete request, NUL-terminated at req[len]; req == NULL
 * says a request was longer than max_line (the service is not called; the
 * client is told).  "quit"/"exit" end the session.  Returns -1 when the
 * session is closing, so the codec stops feeding it.
 */
int	conn_request(struct session *, char *req, size_t len);
/* Raw wire bytes, taking out_lock; false when over max_output. */
bool	conn_write(struct session *, const void *buf, size_t n);
/* The same with out_lock already held (from codec->output). */
bool	conn_write_locked(struct session *, const void *buf, size_t n);
/* End the session once what is queued is flushed (no goodbye is added). */
void	conn_finish(struct session *);
/*
 * The session proper begins: the listener's banner and the service's open
 * (greeting, chat room) run now.  The line codecs call it from open; the
 * websocket codec once its handshake is answered.  A session that never
 * begins (an HTTP request, a refused handshake) never reaches the service
 * except through its http callback.
 */
void	conn_begin(struct session *);
/*
 * The client showed it is alive without sending a request (a pong): the
 * idle timeout starts again.
 */
void	conn_alive(struct session *);

#endif
