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

#endif
