#ifndef FORKD_WORKER_H
#define FORKD_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "pool.h"

struct session;
struct sb_slot;

/* What the master hands to a worker it forks. */
struct worker_args {
	const struct fk_config	*cfg;
	const int		*lfds;		/* cfg->listeners[i] -> listening fd */
	int			 slot;
	unsigned		 generation;
	int			 master_wake;	/* eventfd: "look at the scoreboard" */
	uid_t			 uid;		/* drop to these when root (-1: stay) */
	gid_t			 gid;
};

/* One worker process (there is one of these per process). */
struct worker {
	const struct fk_config	*cfg;
	const int		*lfds;
	int			 slot;
	struct sb_slot		*sb;
	pid_t			 master;
	int			 master_wake;

	int			 epfd;		/* client connections, shared by the pool */
	int			 loopfd;	/* the main thread's: signals, timers */
	int			 sigfd, timerfd;
	int			 watchfd;	/* timer: POOL_WATCH_MS, when there are spares */
	int			 accfd;		/* the acceptor's: listeners + accwake */
	int			 accwake;	/* eventfd: the acceptor must stop */
	pthread_t		 acceptor;
	bool			 acceptor_running;
	_Atomic bool		 accept_stop;
	struct pool		 pool;
	uint64_t		 pool_moving_ms; /* last seen serving */

	/* connection structs by fd; a struct is reused, never freed while
	 * running; entries are read and written with __atomic builtins */
	struct session		**conns;
	size_t			 conns_cap;
	_Atomic int		 maxfd;
	_Atomic long		 nconns;
	long			 share;		/* connections before it stops accepting */

	uint64_t		 resume_ms;	/* acceptor: when a pause for EMFILE ends */
	uint64_t		 emfile_logged_ms;
	uint64_t		 sampled_ms;	/* own figures put in the scoreboard */
	bool			 draining;
	bool			 stopping;
	uint64_t		 drain_deadline_ms;
	uint64_t		 recycle_at;	/* served count that asks for a replacement */
};

/* The child's whole life: never returns. */
void	worker_run(const struct worker_args *) __attribute__((noreturn));

#endif
