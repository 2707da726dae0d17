/*
 * Handover: a reload moves every open session, its socket and its state, to
 * a worker of the new generation instead of draining it.
 *
 *   old worker --offer(fd, state)--> master --offer--> new worker
 *   old worker <------- ack/nack --- master <-- ack/nack --'
 *   old worker --tail (last words)-> master --tail----> new worker
 *
 * Each worker has a SOCK_SEQPACKET socketpair with the master, made before
 * it is forked; one record is one message.  The socket travels as
 * SCM_RIGHTS (the master relays the descriptor it received), the state
 * inline or, when large, in a memfd passed along with it.  The old worker
 * stops reading a session before it offers it and forgets it only once the
 * new one has adopted it; a refusal or the death of the new worker gives it
 * back, and the old worker serves it on.  The master answers every offer,
 * so no session is ever in nobody's hands.
 */
#ifndef FORKD_HANDOVER_H
#define FORKD_HANDOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define HO_MAGIC	0x464b4831u	/* "FKH1" */
#define HO_VERSION	1		/* of the record and of the state in it */
#define HO_INLINE_MAX	8192		/* larger state goes in a memfd */
#define HO_RECORD_MAX	(sizeof(struct ho_hdr) + HO_INLINE_MAX)

enum ho_type {
	HO_OFFER = 1,	/* a session: its socket (+ memfd) and state */
	HO_ACK,		/* adopted: the old worker forgets it */
	HO_NACK,	/* not adopted: the old worker keeps it */
	HO_TAIL,	/* after an ack with a mark: what the old worker still owed */
	HO_READY,	/* upgrade: the new master serves (version: what it reads) */
	HO_GO,		/* master to worker: retire, handing every session over */
};

/* An upgrade links the old master and the new one like a worker slot. */
#define HO_LINK		FK_MAX_SLOTS

enum ho_nack {
	HO_BUSY = 1,	/* nobody could take it now: offer it again later */
	HO_REFUSED,	/* the new generation cannot serve it: it drains */
};

struct ho_hdr {
	uint32_t	magic;
	uint16_t	version;
	uint16_t	type;		/* enum ho_type */
	uint64_t	id;		/* the old worker's name for the session */
	int32_t		from;		/* slot of the old worker (set by the master) */
	uint32_t	reason;		/* HO_NACK: enum ho_nack */
	uint32_t	len;		/* state bytes: inline after the header, or in the memfd */
	uint32_t	memfd;		/* 1: a second descriptor holds the state */
	uint64_t	mark;		/* HO_ACK: the service's mark (0: no tail follows) */
};

/* A growing buffer for a session's state; err once anything failed. */
struct hobuf {
	char	*p;
	size_t	 len, cap;
	bool	 err;
};

void	hob_put(struct hobuf *, const void *, size_t);
void	hob_u32(struct hobuf *, uint32_t);
void	hob_u64(struct hobuf *, uint64_t);
/* a length (u32) and that many bytes */
void	hob_bytes(struct hobuf *, const void *, size_t);

/* Reading it back; err once anything was short or out of range. */
struct horead {
	const char	*p;
	size_t		 len, off;
	bool		 err;
};

uint32_t	 hor_u32(struct horead *);
uint64_t	 hor_u64(struct horead *);
/* points into the state; *n its length (at most max) */
const char	*hor_bytes(struct horead *, size_t *n, size_t max);

struct worker;

/* worker side (main thread) */
void	ho_worker_init(struct worker *, int fd);
/* the master's records arrived */
void	ho_worker_event(struct worker *);
/* retired: hand every session over */
void	ho_worker_start(struct worker *);
/* from the worker's tick: offer again what could not move yet */
void	ho_worker_tick(struct worker *);
/* the master is gone: every session still offered stays here */
void	ho_worker_abort(struct worker *);

/* master side */
/* the master's end of slot's pair was readable; -1 when its peer is gone */
int	ho_master_event(int slot, int (*pick)(int from));
/* retire a worker, its sessions handed over; -1 when it cannot be told */
int	ho_master_retire(int slot);
/* upgrade: the link to the other master (HO_LINK); -1 clears it */
void	ho_master_link(int fd);
/* upgrade: tell the old master we serve */
int	ho_master_ready(void);
/* upgrade: the version the new master said it reads (0: not yet) */
unsigned ho_master_link_version(void);
/* a worker is gone: settle what was offered to it or by it */
void	ho_master_gone(int slot, int (*pick)(int from));
int	ho_master_fd(int slot);
/* a new worker's pair: its end is returned, the master keeps the other */
int	ho_master_pair(int slot, int *theirs);
/* in the child: close every end of the master's */
void	ho_master_close_all(void);
/* offers relayed and not yet answered, to this slot */
long	ho_master_pending(int slot);

#endif
