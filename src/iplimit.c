#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "config.h"
#include "iplimit.h"
#include "log.h"
#include "scoreboard.h"

#define IPTAB_CAP	16384		/* addresses with open connections at once */
#define IPTAB_PROBES	128

struct ipent {
	uint8_t		key[17];	/* family byte + address; all zero = never used */
	uint16_t	count[FK_MAX_SLOTS];
	uint16_t	epoch[FK_MAX_SLOTS];
};

struct iptab {
	pthread_mutex_t	lock;
	struct ipent	e[IPTAB_CAP];
};

static struct iptab *tab;

int
iplimit_create(void)
{
	pthread_mutexattr_t ma;
	void *p;

	p = mmap(NULL, sizeof(*tab), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	tab = p;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&tab->lock, &ma);
	pthread_mutexattr_destroy(&ma);
	return 0;
}

static void
make_key(const struct sockaddr *sa, uint8_t key[17])
{
	memset(key, 0, 17);
	key[0] = (uint8_t)sa->sa_family;
	if (sa->sa_family == AF_INET)
		memcpy(key + 1, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
	else if (sa->sa_family == AF_INET6)
		memcpy(key + 1, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
}

static uint32_t
hash(const uint8_t key[17])
{
	uint32_t h = 2166136261u;
	int i;

	for (i = 0; i < 17; i++)
		h = (h ^ key[i]) * 16777619u;
	return h;
}

/* a column counts only for the life of the worker that wrote it */
static unsigned
column(const struct ipent *e, int s)
{
	const struct sb_slot *slot = &scoreboard->slot[s];

	if (e->count[s] == 0 || atomic_load(&slot->state) == SLOT_FREE ||
	    e->epoch[s] != (uint16_t)atomic_load(&slot->epoch))
		return 0;
	return e->count[s];
}

static unsigned
total(const struct ipent *e)
{
	unsigned n = 0;
	int s;

	for (s = 0; s < FK_MAX_SLOTS; s++)
		n += column(e, s);
	return n;
}

static void
lock(void)
{
	if (pthread_mutex_lock(&tab->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&tab->lock);
}

/* The entry for key, or a reusable one for it; NULL when none is in reach. */
static struct ipent *
lookup(const uint8_t key[17], bool create)
{
	static const uint8_t empty[17];
	struct ipent *reuse = NULL;
	uint32_t h = hash(key), i;

	for (i = 0; i < IPTAB_PROBES; i++) {
		struct ipent *e = &tab->e[(h + i) % IPTAB_CAP];

		if (memcmp(e->key, key, 17) == 0)
			return e;
		if (memcmp(e->key, empty, 17) == 0) {
			if (reuse == NULL)
				reuse = e;
			break;		/* the chain ends here */
		}
		if (reuse == NULL && total(e) == 0)
			reuse = e;
	}
	if (!create || reuse == NULL)
		return NULL;
	memcpy(reuse->key, key, 17);
	memset(reuse->count, 0, sizeof(reuse->count));
	return reuse;
}

bool
iplimit_acquire(int slot, const struct sockaddr *addr, int limit)
{
	uint16_t epoch = (uint16_t)atomic_load(&scoreboard->slot[slot].epoch);
	uint8_t key[17];
	struct ipent *e;
	bool ok = false;

	make_key(addr, key);
	lock();
	e = lookup(key, true);
	if (e != NULL && total(e) < (unsigned)limit) {
		if (e->epoch[slot] != epoch) {
			e->epoch[slot] = epoch;
			e->count[slot] = 0;
		}
		e->count[slot]++;
		ok = true;
	}
	pthread_mutex_unlock(&tab->lock);
	if (e == NULL)
		log_warnx("per-address table full: refusing a connection");
	return ok;
}

void
iplimit_add(int slot, const struct sockaddr *addr)
{
	uint16_t epoch = (uint16_t)atomic_load(&scoreboard->slot[slot].epoch);
	uint8_t key[17];
	struct ipent *e;

	make_key(addr, key);
	lock();
	e = lookup(key, true);
	if (e != NULL) {
		if (e->epoch[slot] != epoch) {
			e->epoch[slot] = epoch;
			e->count[slot] = 0;
		}
		e->count[slot]++;
	}
	pthread_mutex_unlock(&tab->lock);
}

void
iplimit_release(int slot, const struct sockaddr *addr)
{
	uint16_t epoch = (uint16_t)atomic_load(&scoreboard->slot[slot].epoch);
	uint8_t key[17];
	struct ipent *e;

	make_key(addr, key);
	lock();
	e = lookup(key, false);
	if (e != NULL && e->epoch[slot] == epoch && e->count[slot] > 0)
		e->count[slot]--;
	pthread_mutex_unlock(&tab->lock);
}
