/*
 * The channel layer between the workers of one host.
 *
 * Everything lives in shared memory made by the master before any fork, so
 * only forkd's own processes can reach it.  Each worker slot has an inbound
 * ring of lines: a publisher appends under the ring's lock and wakes the
 * receiver through a futex on the ring; the receiver, a thread of the worker,
 * takes everything queued and hands it to the service.  Lines from one sender
 * stay in order; a ring that is full (its worker cannot keep up) drops lines
 * and says so, it never blocks the sender.  The member list is a table under
 * its own lock.  Every lock is a robust process-shared mutex, so a worker
 * that dies holding one cannot wedge the others, and entries of dead workers
 * are swept out as they are met.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "chan.h"
#include "chan_local.h"
#include "log.h"
#include "scoreboard.h"
#include "util.h"

#define NAME_MAX_LEN	32
#define PRESENCE_CAP	65536
#define ROOMS_CAP	100000
#define LINE_MAX_LEN	(64 * 1024)
#define RING_BYTES	(512 * 1024)	/* per worker slot; a power of two */

struct presence {
	int32_t		slot;		/* -1: free */
	pid_t		pid;
	uint32_t	room;		/* index into rooms[] */
	char		nick[NAME_MAX_LEN + 1];
};

struct room_entry {
	uint32_t	members;
	char		name[NAME_MAX_LEN + 1];
};

/* lines waiting for one worker: records of [u32 len][u8 room len][room][line] */
struct ring {
	pthread_mutex_t	 lock;
	_Atomic uint32_t seq;		/* futex word: bumped on every append */
	uint64_t	 head, tail;	/* bytes written, bytes taken */
	uint64_t	 dropped;
	char		 data[RING_BYTES];
};

struct chan_shm {
	pthread_mutex_t	 lock;
	_Atomic unsigned guest;
	uint32_t	 presence_hw;	/* entries below have been used */
	uint32_t	 rooms_hw;
	struct presence	 presence[PRESENCE_CAP];
	struct room_entry rooms[ROOMS_CAP];
	struct ring	 rings[FK_MAX_SLOTS];
};

static struct chan_shm	*shm;
static bool		 started;
static int		 my_slot;
static struct chan_limits limits;
static chan_deliver_fn	 deliver;
static _Atomic uint64_t	 dropped;
static _Atomic uint64_t	 dropped_logged_ms;

int
chan_local_setup(void)
{
	pthread_mutexattr_t ma;
	void *p;
	int i;

	if (shm != NULL)
		return 0;
	/* untouched pages cost nothing: the tables grow from the bottom */
	p = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	shm = p;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&shm->lock, &ma);
	for (i = 0; i < FK_MAX_SLOTS; i++)
		pthread_mutex_init(&shm->rings[i].lock, &ma);
	pthread_mutexattr_destroy(&ma);
	return 0;
}

static void
lock_mutex(pthread_mutex_t *m)
{
	/* what a dead holder was doing is either done or not begun: the
	 * tables and rings are only changed after every check passed */
	if (pthread_mutex_lock(m) == EOWNERDEAD)
		pthread_mutex_consistent(m);
}

static void
lock(void)
{
	lock_mutex(&shm->lock);
}

static void
unlock(void)
{
	pthread_mutex_unlock(&shm->lock);
}

static bool
alive(const struct presence *e)
{
	const struct sb_slot *s = &scoreboard->slot[e->slot];

	return atomic_load(&s->pid) == e->pid && atomic_load(&s->state) != SLOT_FREE;
}

static void
drop_entry(struct presence *e)
{
	if (shm->rooms[e->room].members > 0 && --shm->rooms[e->room].members == 0)
		atomic_fetch_sub(&scoreboard->chat_rooms, 1);	/* metrics */
	e->slot = -1;
}

/* Forget members of workers that are gone. */
static void
sweep(void)
{
	uint32_t i;

	for (i = 0; i < shm->presence_hw; i++)
		if (shm->presence[i].slot >= 0 && !alive(&shm->presence[i]))
			drop_entry(&shm->presence[i]);
}

static int
find_room(const char *room)
{
	uint32_t i;

	for (i = 0; i < shm->rooms_hw; i++)
		if (shm->rooms[i].members > 0 && strcmp(shm->rooms[i].name, room) == 0)
			return (int)i;
	return -1;
}

static struct presence *
find_member(int room, const char *nick)
{
	uint32_t i;

	for (i = 0; i < shm->presence_hw; i++) {
		struct presence *e = &shm->presence[i];

		if (e->slot >= 0 && (int)e->room == room && strcmp(e->nick, nick) == 0)
			return e;
	}
	return NULL;
}

int
chan_local_join(const char *room, const char *nick)
{
	struct presence *e = NULL;
	uint32_t i, nrooms = 0;
	int r, rc = CHAN_OK;

	lock();
	sweep();
	r = find_room(room);
	if (r >= 0 && find_member(r, nick) != NULL) {
		rc = CHAN_TAKEN;
		goto out;
	}
	if (r >= 0 && (int)shm->rooms[r].members >= limits.max_members) {
		rc = CHAN_ROOM_FULL;
		goto out;
	}
	for (i = 0; i < shm->presence_hw && e == NULL; i++)
		if (shm->presence[i].slot < 0)
			e = &shm->presence[i];
	if (e == NULL && shm->presence_hw < PRESENCE_CAP)
		e = &shm->presence[shm->presence_hw++];
	if (e == NULL) {
		rc = CHAN_FULL;
		goto out;
	}
	if (r < 0) {
		int free_room = -1;

		for (i = 0; i < shm->rooms_hw; i++) {
			if (shm->rooms[i].members > 0)
				nrooms++;
			else if (free_room < 0)
				free_room = (int)i;
		}
		if ((int)nrooms >= limits.max_rooms) {
			rc = CHAN_TOO_MANY;
			e->slot = -1;
			goto out;
		}
		if (free_room < 0) {
			if (shm->rooms_hw >= ROOMS_CAP) {
				rc = CHAN_TOO_MANY;
				e->slot = -1;
				goto out;
			}
			free_room = (int)shm->rooms_hw++;
		}
		r = free_room;
		snprintf(shm->rooms[r].name, sizeof(shm->rooms[r].name), "%s", room);
	}
	e->slot = my_slot;
	e->pid = getpid();
	e->room = (uint32_t)r;
	snprintf(e->nick, sizeof(e->nick), "%s", nick);
	if (shm->rooms[r].members++ == 0)
		atomic_fetch_add(&scoreboard->chat_rooms, 1);	/* metrics */
out:
	unlock();
	return rc;
}

void
chan_local_leave(const char *room, const char *nick)
{
	struct presence *e;
	int r;

	lock();
	r = find_room(room);
	if (r >= 0 && (e = find_member(r, nick)) != NULL && e->slot == my_slot)
		drop_entry(e);
	unlock();
}

int
chan_local_rename(const char *room, const char *from, const char *to)
{
	struct presence *e;
	int r, rc = CHAN_OK;

	lock();
	sweep();
	r = find_room(room);
	if (r < 0 || (e = find_member(r, from)) == NULL)
		rc = CHAN_FULL;
	else if (find_member(r, to) != NULL)
		rc = CHAN_TAKEN;
	else
		snprintf(e->nick, sizeof(e->nick), "%s", to);
	unlock();
	return rc;
}

/* append "sep item" to buf, ending in "..." when it no longer fits */
static void
list_add(char *buf, size_t len, size_t *used, const char *item, bool *full)
{
	int n;

	if (*full)
		return;
	n = snprintf(buf + *used, len - *used, "%s%s", *used ? ", " : "", item);
	if (n < 0 || (size_t)n >= len - *used - 5) {
		snprintf(buf + *used, len - *used, "%s...", *used ? ", " : "");
		*used += strlen(buf + *used);
		*full = true;
		return;
	}
	*used += (size_t)n;
}

int
chan_local_who(const char *room, char *buf, size_t len)
{
	size_t used = 0;
	uint32_t i;
	bool full = false;
	int r, count = 0;

	buf[0] = '\0';
	lock();
	sweep();
	r = find_room(room);
	for (i = 0; r >= 0 && i < shm->presence_hw; i++) {
		const struct presence *e = &shm->presence[i];

		if (e->slot >= 0 && (int)e->room == r) {
			list_add(buf, len, &used, e->nick, &full);
			count++;
		}
	}
	unlock();
	return count;
}

int
chan_local_rooms(char *buf, size_t len)
{
	size_t used = 0;
	uint32_t i;
	bool full = false;
	int count = 0;

	buf[0] = '\0';
	lock();
	sweep();
	for (i = 0; i < shm->rooms_hw; i++) {
		char item[NAME_MAX_LEN + 16];

		if (shm->rooms[i].members == 0)
			continue;
		snprintf(item, sizeof(item), "%s (%u)", shm->rooms[i].name,
		    shm->rooms[i].members);
		list_add(buf, len, &used, item, &full);
		count++;
	}
	unlock();
	return count;
}

int
chan_local_own(void (*fn)(const char *, const char *, void *), void *arg)
{
	struct own {
		char	room[NAME_MAX_LEN + 1];
		char	nick[NAME_MAX_LEN + 1];
	} *mine;
	uint32_t i, n = 0;
	pid_t me = getpid();

	/* copied out first: fn may take its time, the table's lock must not */
	mine = calloc(PRESENCE_CAP, sizeof(*mine));
	if (mine == NULL)
		return -1;
	lock();
	for (i = 0; i < shm->presence_hw; i++) {
		const struct presence *e = &shm->presence[i];

		if (e->slot != my_slot || e->pid != me)
			continue;
		memcpy(mine[n].room, shm->rooms[e->room].name, sizeof(mine[n].room));
		memcpy(mine[n].nick, e->nick, sizeof(mine[n].nick));
		n++;
	}
	unlock();
	for (i = 0; i < n; i++)
		fn(mine[i].room, mine[i].nick, arg);
	free(mine);
	return (int)n;
}

unsigned
chan_local_next_guest(void)
{
	return atomic_fetch_add(&shm->guest, 1) + 1;
}

/* ---- lines between workers ---- */

static void
ring_copy_in(struct ring *r, uint64_t at, const void *src, size_t n)
{
	size_t off = (size_t)(at % RING_BYTES), first = MIN(n, RING_BYTES - off);

	memcpy(r->data + off, src, first);
	memcpy(r->data, (const char *)src + first, n - first);
}

static void
ring_copy_out(const struct ring *r, uint64_t at, void *dst, size_t n)
{
	size_t off = (size_t)(at % RING_BYTES), first = MIN(n, RING_BYTES - off);

	memcpy(dst, r->data + off, first);
	memcpy((char *)dst + first, r->data, n - first);
}

static long
futex(_Atomic uint32_t *word, int op, uint32_t val)
{
	return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

static void *
receiver(void *arg)
{
	static char buf[RING_BYTES];
	struct ring *r = &shm->rings[my_slot];

	(void)arg;
	for (;;) {
		uint32_t seq = atomic_load(&r->seq);
		size_t n, at;

		lock_mutex(&r->lock);
		n = (size_t)(r->head - r->tail);
		if (n > 0)
			ring_copy_out(r, r->tail, buf, n);
		r->tail = r->head;
		pthread_mutex_unlock(&r->lock);
		if (n == 0) {
			futex(&r->seq, FUTEX_WAIT, seq);
			continue;
		}
		for (at = 0; at + 5 <= n; ) {
			uint32_t len;
			size_t rlen;

			memcpy(&len, buf + at, 4);
			rlen = (unsigned char)buf[at + 4];
			if (len < 5 + rlen || at + len > n)
				break;		/* cannot happen: only we write here */
			{
				char room[NAME_MAX_LEN + 1];

				memcpy(room, buf + at + 5, rlen);
				room[rlen] = '\0';
				deliver(room, buf + at + 5 + rlen, len - 5 - rlen);
			}
			at += len;
		}
	}
	return NULL;
}

int
chan_local_start(int slot, const struct chan_limits *lim, chan_deliver_fn fn)
{
	struct ring *r;
	pthread_t tid;

	if (shm == NULL) {
		errno = ENXIO;
		return -1;
	}
	my_slot = slot;
	limits = *lim;
	deliver = fn;
	/* what was queued for this slot's previous worker is nobody's now */
	r = &shm->rings[slot];
	lock_mutex(&r->lock);
	r->tail = r->head;
	pthread_mutex_unlock(&r->lock);
	if (pthread_create(&tid, NULL, receiver, NULL) != 0)
		return -1;
	pthread_setname_np(tid, "forkd-chat");
	pthread_detach(tid);
	started = true;
	return 0;
}

int
chan_local_publish(const char *room, const char *line, size_t len)
{
	size_t rlen = strlen(room);
	uint32_t total;
	int i;

	if (!started || rlen == 0 || rlen > NAME_MAX_LEN)
		return -1;
	if (len > LINE_MAX_LEN)
		len = LINE_MAX_LEN;
	total = (uint32_t)(5 + rlen + len);
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct ring *r = &shm->rings[i];
		int st = atomic_load(&scoreboard->slot[i].state);
		unsigned char rl = (unsigned char)rlen;
		bool fits;

		if (i == my_slot || st == SLOT_FREE || st == SLOT_STARTING)
			continue;
		lock_mutex(&r->lock);
		fits = r->head - r->tail + total <= RING_BYTES;
		if (fits) {
			ring_copy_in(r, r->head, &total, 4);
			ring_copy_in(r, r->head + 4, &rl, 1);
			ring_copy_in(r, r->head + 5, room, rlen);
			ring_copy_in(r, r->head + 5 + rlen, line, len);
			r->head += total;
		} else {
			r->dropped++;
		}
		pthread_mutex_unlock(&r->lock);
		if (fits) {
			atomic_fetch_add(&r->seq, 1);
			futex(&r->seq, FUTEX_WAKE, 1);
		} else {
			uint64_t now = now_ms();

			/* a worker that cannot keep up loses lines, never stalls us */
			atomic_fetch_add(&dropped, 1);
			sb_count(&scoreboard->slot[my_slot].chat_dropped, 1);	/* metrics */
			if (now - atomic_load(&dropped_logged_ms) > 10000) {
				atomic_store(&dropped_logged_ms, now);
				log_warnx("chat: worker %d is not keeping up: %llu lines dropped "
				    "so far", i, (unsigned long long)atomic_load(&dropped));
			}
		}
	}
	return 0;
}
