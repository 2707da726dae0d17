/*
 * The one interface every line service implements.
 *
 * The connection layer (conn.c) owns the socket, the framing, the limits and
 * the timeouts; a service sees one complete request line at a time, without
 * its terminator, and answers through the session_* calls below.  A service
 * never blocks: everything it sends is queued on the session and flushed by
 * the connection layer.
 */
#ifndef FORKD_SERVICE_H
#define FORKD_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct session;
struct setting;
struct fk_config;
struct fk_listener;
struct http_request;

struct service {
	const char	*name;
	/* the service's own settings group in the config file (may be NULL) */
	const struct setting *settings;
	size_t		 conf_size;	/* size of the struct those settings fill */
	size_t		 session_size;	/* per-session state, zeroed at connect */
	/* bytes of the longest reply to one request, when that is more than a
	 * line's worth: max_output must hold it (checked with the config) */
	size_t		 max_reply;

	/*
	 * Checks across the service's settings once they are parsed; optional.
	 * On a problem: -1, *key names the setting to blame (its line is
	 * reported) and msg says what is wrong.
	 */
	int		(*check)(const void *conf, const char **key, char *msg,
			    size_t len);
	/* in the master before workers are forked (again on reload); optional */
	int		(*master_init)(const struct fk_config *, const void *conf);
	/* once per worker process, after the config is loaded; optional */
	int		(*worker_init)(const struct fk_config *, const void *conf, int slot);
	/* a client connected (after the listener's banner); optional */
	void		(*open)(struct session *);
	/* one request line, terminator stripped, NUL-terminated at line[len] */
	void		(*line)(struct session *, char *line, size_t len);
	/* the session ends, for whatever reason; optional */
	void		(*close)(struct session *);
	/*
	 * An HTTP request on a listener whose protocol is http, or a plain GET
	 * (no Upgrade) on a websocket listener: answer with http_respond()
	 * (http.h).  Optional: without it, http listeners refuse the service
	 * and websocket listeners answer 426.
	 */
	void		(*http)(struct session *, const struct http_request *);
	/*
	 * Handover: a reload moves the session, with its socket, to a worker
	 * of the new generation.  save (old worker) writes the session's state
	 * (room, nick) into buf, at most len bytes, and returns its size, or -1
	 * when it cannot move (it then stays and drains); from then on what
	 * others send it may be kept aside.  restore (new worker) rebuilds
	 * session_data from those bytes without a word to anyone (no greeting,
	 * no "joined"): 0, or -1 to refuse it; *mark, when not 0, says the new
	 * worker waits for the old one's last words (tail) before it serves.
	 * handed (old worker) says how it went: moved, the session is gone
	 * from here (forget it silently: no close, no "left"), and what the
	 * client must still get before anything from the new worker goes in
	 * *tail (malloc'd, *tlen bytes; only with a mark); not moved, it stays
	 * (send what was kept aside, take back what restore took over).  tail
	 * (new worker) queues those bytes; the session is served from then on.
	 * save NULL: a service with session_size 0 moves as it is, any other
	 * stays.
	 */
	int		(*save)(struct session *, char *buf, size_t len);
	int		(*restore)(struct session *, const char *buf, size_t len,
			    uint64_t *mark);
	void		(*handed)(struct session *, bool moved, uint64_t mark,
			    char **tail, size_t *tlen);
	void		(*tail)(struct session *, const char *buf, size_t len);
	/* takes binary WebSocket messages (as requests; the replies to one go
	 * back as one binary message); otherwise they are refused (close 1003) */
	bool		 binary;
};

/* Queue one reply line; "\r\n" is appended. */
void		 session_reply(struct session *, const char *fmt, ...)
		    __attribute__((format(printf, 2, 3)));
/* Queue raw bytes (the caller provides any line ending). */
void		 session_send(struct session *, const void *buf, size_t len);
/*
 * session_send/session_reply may be called from any thread for any open
 * session (chat delivers to other members); a caller that is not running the
 * session's own line handler must then call session_wake so it is sent.
 */
void		 session_wake(struct session *);
/*
 * Work that may wait (a presence check on a remote server): run fn(s, arg)
 * on the worker's offload thread rather than on the calling pool thread.
 * The session takes no further request until fn has returned (what the
 * client sent meanwhile waits, in order); replies fn makes are sent as
 * usual.  Only from the service's open or line callback, once per call.
 * false: it cannot be offloaded (fn did not run; do the work in place).
 */
bool		 session_offload(struct session *,
		    void (*fn)(struct session *, void *arg), void *arg);
/* Say "Bye" and close once the output is flushed. */
void		 session_quit(struct session *);
/* The session's private state (session_size bytes). */
void		*session_data(struct session *);
/* The service's own configuration struct (conf_size bytes) */
const void	*session_conf(struct session *);
const struct fk_listener *session_listener(struct session *);
/* Remote address as text, e.g. "127.0.0.1:40312" */
const char	*session_peer(struct session *);
/*
 * What the client asked for when it connected, where its protocol says:
 * the path of a WebSocket handshake ("/websock1/", without the query);
 * NULL for protocols without one (line, chunk).  The codec fills it, so
 * a service can use it without knowing the protocol.
 */
const char	*session_resource(struct session *);

/* The registry: every service forkd knows, NULL-terminated. */
extern const struct service *const services[];
const struct service *service_find(const char *name);
/* does any listener of cfg serve it? */
int		 service_used(const struct fk_config *, int index);
int		 service_index(const struct service *);

#endif
