/*
 * The channel layer between the workers of one host.
 *
 * Lines travel as datagrams between per-worker unix sockets in the abstract
 * namespace (named after the master's pid and the worker's slot); the kernel
 * keeps each sender's lines in order and bounds every queue.  A datagram is
 * only taken from a process that is one of our workers (SCM_CREDENTIALS).
 * The member list lives in shared memory made by the master, under a robust
 * process-shared mutex, so a worker that dies holding it cannot wedge the
 * others; entries of dead workers are swept out as they are met.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "chan.h"
#include "log.h"
#include "scoreboard.h"
#include "util.h"

#define NAME_MAX_LEN	32
#define PRESENCE_CAP	65536
#define ROOMS_CAP	100000
#define DGRAM_MAX	(64 * 1024)

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

struct chan_shm {
	pthread_mutex_t	 lock;
	_Atomic unsigned guest;
	uint32_t	 presence_hw;	/* entries below have been used */
	uint32_t	 rooms_hw;
	struct presence	 presence[PRESENCE_CAP];
	struct room_entry rooms[ROOMS_CAP];
};

static struct chan_shm	*shm;
static int		 sock = -1;
static int		 my_slot;
static struct chan_limits limits;
static chan_deliver_fn	 deliver;
static _Atomic uint64_t	 dropped;
static _Atomic uint64_t	 dropped_logged_ms;

int
chan_setup(void)
{
	pthread_mutexattr_t ma;
	void *p;

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
	pthread_mutexattr_destroy(&ma);
	return 0;
}

static void
lock(void)
{
	if (pthread_mutex_lock(&shm->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&shm->lock);	/* tables are never half-written */
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
	if (shm->rooms[e->room].members > 0)
		shm->rooms[e->room].members--;
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
chan_join(const char *room, const char *nick)
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
	shm->rooms[r].members++;
out:
	unlock();
	return rc;
}

void
chan_leave(const char *room, const char *nick)
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
chan_rename(const char *room, const char *from, const char *to)
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
chan_who(const char *room, char *buf, size_t len)
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
chan_rooms(char *buf, size_t len)
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

unsigned
chan_next_guest(void)
{
	return atomic_fetch_add(&shm->guest, 1) + 1;
}

/* ---- lines between workers ---- */

static socklen_t
slot_address(int slot, struct sockaddr_un *sun)
{
	int n;

	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	/* abstract: sun_path[0] stays NUL */
	n = snprintf(sun->sun_path + 1, sizeof(sun->sun_path) - 1, "forkd.%ld.chat.%d",
	    (long)scoreboard->master_pid, slot);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static bool
from_our_worker(pid_t pid)
{
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (atomic_load(&scoreboard->slot[i].pid) == pid)
			return true;
	return false;
}

static void *
receiver(void *arg)
{
	static char buf[DGRAM_MAX + 1];
	char cbuf[CMSG_SPACE(sizeof(struct ucred))];

	(void)arg;
	pthread_setname_np(pthread_self(), "forkd-chat");
	for (;;) {
		struct iovec iov = { buf, DGRAM_MAX };
		struct msghdr mh = { 0 };
		struct cmsghdr *cm;
		struct ucred *cred = NULL;
		ssize_t n;
		size_t rlen;

		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		n = recvmsg(sock, &mh, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_warn("chat: cannot receive");
			return NULL;
		}
		for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS)
				cred = (struct ucred *)(void *)CMSG_DATA(cm);
		if (cred == NULL || !from_our_worker(cred->pid) || n < 2)
			continue;
		rlen = (unsigned char)buf[0];
		if (rlen == 0 || rlen > NAME_MAX_LEN || (size_t)n < 1 + rlen + 1)
			continue;
		buf[n] = '\0';
		/* "<len><room>\0<line>" */
		if (buf[1 + rlen] != '\0')
			continue;
		deliver(buf + 1, buf + 2 + rlen, (size_t)n - 2 - rlen);
	}
}

int
chan_start(int slot, const struct chan_limits *lim, chan_deliver_fn fn)
{
	struct sockaddr_un sun;
	socklen_t len;
	pthread_t tid;
	int one = 1, rcv = 1 << 20;

	if (shm == NULL) {
		errno = ENXIO;
		return -1;
	}
	my_slot = slot;
	limits = *lim;
	deliver = fn;
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -1;
	len = slot_address(slot, &sun);
	if (bind(sock, (struct sockaddr *)&sun, len) != 0)
		return -1;
	setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	if (pthread_create(&tid, NULL, receiver, NULL) != 0)
		return -1;
	pthread_detach(tid);
	return 0;
}

int
chan_publish(const char *room, const char *line, size_t len)
{
	char buf[DGRAM_MAX];
	size_t rlen = strlen(room), n;
	int i;

	if (sock < 0 || rlen == 0 || rlen > NAME_MAX_LEN)
		return -1;
	if (len > DGRAM_MAX - rlen - 2)
		len = DGRAM_MAX - rlen - 2;
	buf[0] = (char)rlen;
	memcpy(buf + 1, room, rlen + 1);
	memcpy(buf + 2 + rlen, line, len);
	n = 2 + rlen + len;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct sockaddr_un sun;
		socklen_t alen;
		int st = atomic_load(&scoreboard->slot[i].state);

		if (i == my_slot || st == SLOT_FREE || st == SLOT_STARTING)
			continue;
		alen = slot_address(i, &sun);
		if (sendto(sock, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL,
		    (struct sockaddr *)&sun, alen) < 0 &&
		    (errno == EAGAIN || errno == ENOBUFS)) {
			uint64_t now = now_ms();

			/* a worker that cannot keep up loses lines, never stalls us */
			atomic_fetch_add(&dropped, 1);
			if (now - atomic_load(&dropped_logged_ms) > 10000) {
				atomic_store(&dropped_logged_ms, now);
				log_warnx("chat: worker %d is not keeping up: %llu lines dropped",
				    i, (unsigned long long)atomic_load(&dropped));
			}
		}
	}
	return 0;
}
