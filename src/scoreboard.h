#ifndef FORKD_SCOREBOARD_H
#define FORKD_SCOREBOARD_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

/*
 * Shared counters, mapped by the master before any fork.  Each worker writes
 * only its own slot; the master owns the header.  Everything is an atomic so
 * readers (stats, STATUS=) never see torn values.
 */
/*
 * Counters kept per listener, in every slot (the listener's metrics_id in
 * its configuration picks the entry; the last entry takes listeners past
 * the table's end), and why connections were refused.
 */
#define SB_MAX_LISTENERS	256

enum sb_refuse {
	REFUSE_MAX_CONNECTIONS = 0,
	REFUSE_PER_IP,
	REFUSE_EMFILE,		/* out of file descriptors */
	REFUSE_COUNT
};

struct sb_lcount {
	_Atomic long		conns;		/* open now */
	_Atomic uint64_t	accepted;
	_Atomic uint64_t	requests;
	_Atomic uint64_t	bytes_in;
	_Atomic uint64_t	bytes_out;
};

/* Which listener an entry counts for: written by the master before fork. */
struct sb_lkey {
	char			listener[64];	/* "ADDRESS:PORT" */
	int			service;	/* index into services[] */
	int			protocol;	/* enum fk_protocol */
};

/* A process's own figures, sampled by itself about once a second. */
struct sb_proc {
	_Atomic uint64_t	cpu_us;		/* user + system */
	_Atomic uint64_t	rss_bytes;
	_Atomic long		fds;
};

enum slot_state {
	SLOT_FREE = 0,
	SLOT_STARTING,		/* forked, not yet accepting */
	SLOT_READY,		/* accepting */
	SLOT_DRAINING,		/* retired or stopping: no longer accepting */
};

struct sb_slot {
	_Atomic int		state;
	_Atomic pid_t		pid;
	_Atomic unsigned	generation;
	_Atomic uint64_t	started_ms;	/* CLOCK_MONOTONIC */
	_Atomic uint64_t	heartbeat_ms;	/* CLOCK_MONOTONIC, beaten every second */
	_Atomic long		conns;		/* open now */
	_Atomic uint64_t	served;		/* connections accepted */
	_Atomic uint64_t	requests;	/* lines handled */
	_Atomic uint64_t	rejected;	/* refused by a limit */
	_Atomic int		want_recycle;	/* served max_requests_per_worker */
	_Atomic int		sitting_out;	/* its acceptor is not on the listeners */
	_Atomic unsigned	epoch;		/* bumped for every worker in the slot */
	_Atomic long		svc_conns[FK_MAX_SERVICES];
	_Atomic uint64_t	svc_served[FK_MAX_SERVICES];
	/* metrics */
	_Atomic uint64_t	refused[REFUSE_COUNT];
	_Atomic long		chat_members;
	_Atomic uint64_t	chat_delivered;
	_Atomic uint64_t	chat_dropped;
	struct sb_proc		proc;
	struct sb_lcount	lc[SB_MAX_LISTENERS + 1];
	/* by protocol (enum fk_protocol) */
	_Atomic long		proto_conns[FK_MAX_PROTOCOLS];
	_Atomic uint64_t	proto_served[FK_MAX_PROTOCOLS];
	_Atomic uint64_t	proto_requests[FK_MAX_PROTOCOLS];
	/* sessions closed, by enum conn_kill (KILL_NONE: by the client) */
	_Atomic uint64_t	closed[FK_MAX_KILLS];
} __attribute__((aligned(64)));

struct scoreboard {
	pid_t			master_pid;
	_Atomic uint64_t	start_time;	/* wall clock, seconds */
	_Atomic uint64_t	start_ms;	/* CLOCK_MONOTONIC */
	_Atomic unsigned	generation;
	_Atomic int		workers;	/* wanted now */
	_Atomic int		threads;
	_Atomic uint64_t	restarts;	/* workers replaced after dying */
	_Atomic uint64_t	recycled;	/* replaced after max_requests_per_worker */
	_Atomic uint64_t	reloads;
	_Atomic uint64_t	reload_failures;
	/* what workers that are gone had counted */
	_Atomic uint64_t	retired_served;
	_Atomic uint64_t	retired_requests;
	_Atomic uint64_t	retired_rejected;
	_Atomic uint64_t	retired_svc_served[FK_MAX_SERVICES];
	_Atomic uint64_t	retired_refused[REFUSE_COUNT];
	_Atomic uint64_t	retired_chat_delivered;
	_Atomic uint64_t	retired_chat_dropped;
	_Atomic uint64_t	retired_cpu_us;
	struct sb_lcount	retired_lc[SB_MAX_LISTENERS + 1];
	/* odd while the master folds a slot into the retired totals: readers
	 * that want a consistent sum read again when it moved */
	_Atomic unsigned	retire_seq;
	_Atomic uint64_t	restarts_hung;	/* of restarts: missed heartbeats */
	_Atomic long		chat_rooms;	/* rooms with members, this host */
	struct sb_proc		master_proc;
	/* listener entries in use, and what each counts for */
	_Atomic int		nlkeys;
	struct sb_lkey		lkeys[SB_MAX_LISTENERS];
	_Atomic uint64_t	retired_proto_served[FK_MAX_PROTOCOLS];
	_Atomic uint64_t	retired_proto_requests[FK_MAX_PROTOCOLS];
	_Atomic uint64_t	retired_closed[FK_MAX_KILLS];
	/* acceptors that sit out wait on this futex; any accept bumps it */
	_Atomic uint32_t	accept_seq;
	_Atomic int		accept_waiters;
	struct sb_slot		slot[FK_MAX_SLOTS];
};

extern struct scoreboard *scoreboard;

int	scoreboard_create(void);
/* master: a worker in this slot is gone; fold its counters into the totals */
void	scoreboard_retire(int slot);

struct sb_totals {
	long		conns;
	uint64_t	served, requests, rejected;
	long		svc_conns[FK_MAX_SERVICES];
	uint64_t	svc_served[FK_MAX_SERVICES];
	long		proto_conns[FK_MAX_PROTOCOLS];
	uint64_t	proto_served[FK_MAX_PROTOCOLS];
	uint64_t	proto_requests[FK_MAX_PROTOCOLS];
	uint64_t	closed[FK_MAX_KILLS];
	int		ready, draining, starting;
};
void	scoreboard_totals(struct sb_totals *);
/* open connections summed over every slot */
long	scoreboard_conns(void);

/*
 * master, before forking a generation: give each listener of cfg its entry
 * (the same entry as long as address, service and protocol stay the same).
 */
void	scoreboard_listeners(struct fk_config *cfg);
/* this process's CPU time, resident memory and open descriptors into p */
void	scoreboard_sample(struct sb_proc *p);

/* Counting from the request path: relaxed, each slot has one writer. */
static inline void
sb_count(_Atomic uint64_t *ctr, uint64_t n)
{
	atomic_fetch_add_explicit(ctr, n, memory_order_relaxed);
}

static inline struct sb_lcount *
sb_lc(struct sb_slot *s, int metrics_id)
{
	if (metrics_id < 0 || metrics_id >= SB_MAX_LISTENERS)
		metrics_id = SB_MAX_LISTENERS;
	return &s->lc[metrics_id];
}
/* a session's listener entry in its worker's slot (where conn.h is known) */
#define SESSION_LC(c)	sb_lc((c)->w->sb, (c)->l->metrics_id)

#endif
