#ifndef FORKD_UTIL_H
#define FORKD_UTIL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define nitems(a)	(sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)	((a) < (b) ? (a) : (b))
/* "s" unless n is one: "%ld connection%s", n, PLURAL(n) */
#define PLURAL(n)	((n) == 1 ? "" : "s")
#define MAX(a, b)	((a) > (b) ? (a) : (b))

/* CLOCK_MONOTONIC in milliseconds */
uint64_t	 now_ms(void);
/*
 * Has `limit` passed since `stamp`, at `now`?  Other threads stamp after a
 * reader took `now`, so a stamp from the future counts as fresh, not as a
 * wrapped-around eternity.
 */
static inline int
older_than(uint64_t now, uint64_t stamp, uint64_t limit)
{
	return stamp < now && now - stamp >= limit;
}
/* Edit distance, for "did you mean" hints; stops counting at limit+1. */
size_t		 edit_distance(const char *a, const char *b, size_t limit);
/* "1.2.3.4:80" / "[::1]:80" */
const char	*sockaddr_text(const struct sockaddr *sa, char *buf, size_t len);
/* write all of buf to a blocking or non-blocking fd, retrying on EINTR */
int		 write_full(int fd, const void *buf, size_t len);
/* Raise RLIMIT_NOFILE's soft limit to the hard one; returns the new soft limit */
long		 raise_nofile_limit(void);
/*
 * Futexes between the threads of one process: sleep while *word is expect
 * (it may return early: recheck), and wake up to n sleepers.
 */
void		 futex_wait_private(_Atomic uint32_t *word, uint32_t expect);
void		 futex_wake_private(_Atomic uint32_t *word, int n);

#endif
