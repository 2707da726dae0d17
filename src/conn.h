#ifndef FORKD_CONN_H
#define FORKD_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "framing.h"

struct worker;
struct fk_listener;
struct service;
struct codec;

/* Why a connection is being closed by the server (not by its client). */
enum conn_kill {
	KILL_NONE = 0,
	KILL_SHUTDOWN,		/* the daemon stops */
	KILL_RETIRE,		/* a reload retired this worker and its grace ran out */
	KILL_IDLE,		/* no complete line within idle_timeout */
	KILL_SEND_TIMEOUT,	/* the client did not read its replies in time */
	KILL_OVERFLOW,		/* more output queued than max_output */
	KILL_PROTOCOL,		/* the client broke its protocol (codec's word) */
	KILL_COUNT
};

/*
 * A client connection.  Whoever holds RUN in `state` owns it (a pool thread
 * that got its epoll event, the acceptor, the housekeeper, a chat publisher
 * delivering to it); anyone else who has news for it sets PEND and leaves the
 * work to the owner, which loops until PEND stays clear.
 */
struct session {
	_Atomic unsigned	 state;
	_Atomic bool		 open;
	_Atomic int		 kill;
	int			 fd;
	struct worker		*w;
	const struct fk_listener *l;
	const struct service	*svc;
	const struct codec	*codec;
	void			*cstate;	/* the codec's, per connection */
	bool			 goodbye_said;	/* the codec's last words are queued */
	bool			 begun;		/* the service's open ran (conn_begin) */
	/* when the codec next wants its tick (CLOCK_MONOTONIC ms; 0 = never);
	 * the sweep sets tick_due and kicks the session then */
	_Atomic uint64_t	 tick_ms;
	_Atomic bool		 tick_due;
	/* a request's work runs on the offload thread (session_offload): no
	 * further request is taken, and what was read after it waits here */
	_Atomic bool		 held;
	char			*heldbuf;
	size_t			 heldlen;
	size_t			 in_used;	/* codec: bytes taken when it stopped */
	/* closed by the server, its write side shut: what the client still
	 * sends is read and dropped until it closes too, or a bound passes */
	_Atomic bool		 lingering;
	uint64_t		 linger_until;
	size_t			 lingered;
	int			 svc_idx;
	const void		*svc_conf;
	void			*data;
	_Atomic uint64_t	 idle_ms;
	struct framer		 in;
	bool			 closing;	/* close once the output is flushed */
	bool			 eof;
	unsigned		 lines;		/* handled since the last count */

	pthread_mutex_t		 out_lock;
	char			*out;
	size_t			 out_len, out_off, out_cap;
	bool			 out_full;
	bool			 out_dying;	/* dropped as too slow: service output is discarded */

	bool			 ho_stay;	/* a handover refused it: it drains here */

	struct sockaddr_storage	 peer_addr;
	bool			 ip_counted;	/* holds a max_connections_per_ip slot */

	_Atomic uint64_t	 last_line_ms;
	_Atomic uint64_t	 stalled_ms;	/* output waiting since; 0 = none */
	char			 peer[56];
	char			*resource;	/* session_resource(); the codec's, freed at close */
};

/* acceptor: a new client on fd from listener index li, already counted in
 * its scoreboard slot's conns (the place is given back on every way out) */
void	conn_open(struct worker *, int fd, int li, const struct sockaddr *peer,
	    bool ip_counted);
/* an epoll event, or news from another thread */
void	conn_kick(struct session *);
/* ask the owner to close it for this reason */
void	conn_kill(struct session *, enum conn_kill);
/* timeouts: once in a while from the worker's main thread */
void	conn_sweep(struct worker *, uint64_t now);
/* kill every open connection */
void	conn_kill_all(struct worker *, enum conn_kill);

/*
 * Handover (handover.c), from the worker's main thread.  conn_take makes it
 * the owner of the session on fd when that session is idle and can move,
 * and stops watching it (EPOLL_CTL_DEL); NULL otherwise.  conn_save writes
 * its state; conn_handed settles it: moved, it is forgotten without a word
 * to the client or the service's close; not moved, it is watched and
 * served again.  conn_adopt makes a session of a saved state and a socket
 * (owned, not yet watched: conn_adopted starts it once the old worker knows).
 */
struct hobuf;
struct session *conn_take(struct worker *, int fd);
int	conn_save(struct session *, struct hobuf *);
void	conn_handed(struct session *, bool moved, uint64_t mark, char **tail,
	    size_t *tlen);
struct session *conn_adopt(struct worker *, int fd, const char *state, size_t len,
	    uint64_t *mark, char *why, size_t whylen);
/* the old worker's last words for it (a mark said it waits for them) */
void	conn_tail(struct session *, const char *buf, size_t len);
void	conn_adopted(struct session *);

#endif
