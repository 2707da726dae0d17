/*
 * The master: opens the listeners, forks the workers and then only
 * supervises.  Everything arrives through one epoll set (signals by
 * signalfd, a tick by timerfd, workers' news by eventfd, reload requests on
 * the control socket), so there are no asynchronous signal handlers at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "chan.h"
#include "handover.h"
#include "iplimit.h"
#include "listener.h"
#include "log.h"
#include "master.h"
#include "notify.h"
#include "scoreboard.h"
#include "service.h"
#include "util.h"
#include "worker.h"

#define TICK_MS			250
#define SAMPLE_MS		1000	/* own CPU, memory and fds for metrics */
#define STATUS_EVERY_MS		1000
#define FAST_DEATH_MS		2000	/* a death this soon after start counts as a crash loop */
#define BACKOFF_FIRST_MS	100
#define BACKOFF_MAX_MS		10000
#define GIVE_UP_AFTER		5	/* workers in a row that die before they serve */
#define RELOAD_START_MS		30000	/* a new generation must be up by then */
#define MAX_CTL_CLIENTS		16
#define CTL_TIMEOUT_MS		(RELOAD_START_MS + 15000)
#define OLD_STOP_MS		5000	/* old workers must stop accepting by then */

#define TAG_SIGNAL	1
#define TAG_TIMER	2
#define TAG_WAKE	3
#define TAG_CTL		4
#define TAG_CTL_CLIENT	5	/* + index << 8 */
#define TAG_HAND	6	/* + slot << 8 */

struct wk {
	pid_t		 pid;
	unsigned	 gen;
	uint64_t	 started_ms;
	bool		 ready;
	bool		 retiring;	/* told to drain (SIGQUIT) or stop (SIGTERM) */
	bool		 hung;		/* killed for a missed heartbeat */
	bool		 recycle;	/* asked to be replaced */
};

struct generation {
	struct fk_config *cfg;
	int		*lfds;
	unsigned	 id;
};

static struct {
	struct generation cur;		/* serving */
	struct generation next;		/* being started by a reload (cfg != NULL) */
	uint64_t	 next_deadline;
	uint64_t	 old_accepting_until;	/* a reload waits for the old generation */
	struct lsock_set socks;
	int		 target;
	uid_t		 uid;
	gid_t		 gid;

	int		 epfd, sigfd, timerfd, wakefd, ctlfd;
	char		 ctlpath[108];
	/* a reload that moves the control socket opens the new one first */
	bool		 next_ctl_moves;
	int		 next_ctlfd;
	char		 next_ctlpath[108];
	int		 ctl_clients[MAX_CTL_CLIENTS];
	bool		 ctl_waiting[MAX_CTL_CLIENTS];
	unsigned	 ctl_seq[MAX_CTL_CLIENTS];	/* the reload each one waits for */
	uint64_t	 sampled_ms;	/* own figures last put in the scoreboard */
	unsigned	 reload_seq;	/* reloads started (the file read) so far */

	struct wk	 wk[FK_MAX_SLOTS];
	bool		 ready_sent;
	bool		 stopping;
	bool		 stop_now;
	uint64_t	 stop_deadline;
	bool		 reload_again;
	bool		 giving_up;

	int		 failed_starts;
	uint64_t	 backoff_ms;
	uint64_t	 backoff_until;
	bool		 note_backoff;	/* the note is the crash-loop one */
	uint64_t	 last_status_ms;
	uint64_t	 wd_interval_ms;
	uint64_t	 wd_last_ms;
	char		 note[300];	/* shown after the counts in STATUS= */
	/* an upgrade: a new forkd binary started by us takes over */
	struct {
		bool	 active;	/* started, not yet settled */
		bool	 handing;	/* it serves: our workers hand over to it */
		pid_t	 pid;
		uint64_t deadline;
		uint64_t t0;
		uint64_t moved0;
		bool	 quiet;		/* the new one, until the old one is gone */
	}		 up;
	bool		 ctl_upgrade[MAX_CTL_CLIENTS];	/* waits for the upgrade */
	/* the reload whose old workers hand their sessions over */
	bool		 ho_reload;
	uint64_t	 reload_t0;
	uint64_t	 ho_moved0, ho_failed0;
	int		 chat_link;	/* CHAN_LINK_*, as last logged */
} M;

/* ---- helpers ---- */

static int
live_workers(unsigned gen, bool only_ready)
{
	int i, n = 0;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (M.wk[i].pid > 0 && M.wk[i].gen == gen && !M.wk[i].retiring &&
		    !M.wk[i].recycle && (!only_ready || M.wk[i].ready))
			n++;
	return n;
}

static int
all_workers(void)
{
	int i, n = 0;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (M.wk[i].pid > 0)
			n++;
	return n;
}

static void
describe_status(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "was killed by signal %d (%s)%s", WTERMSIG(status),
		    strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
	else
		snprintf(buf, len, "ended with status 0x%x", status);
}

static void
update_status(bool force)
{
	struct sb_totals t;
	uint64_t now = now_ms();
	char counts[200];
	int link, n;

	if (!force && now - M.last_status_ms < STATUS_EVERY_MS)
		return;
	if (M.up.handing || M.up.quiet)
		return;		/* the other master speaks for the service */
	M.last_status_ms = now;
	scoreboard_totals(&t);
	n = live_workers(M.cur.id, true);
	snprintf(counts, sizeof(counts), "%d worker%s, %ld client%s, %llu served",
	    n, PLURAL(n), t.conns, PLURAL(t.conns), (unsigned long long)t.served);
	{
		uint64_t moved = atomic_load(&scoreboard->handed_over),
		    failed = atomic_load(&scoreboard->handover_failed);
		size_t at = strlen(counts);

		if (moved > 0 || failed > 0)
			snprintf(counts + at, sizeof(counts) - at, ", %llu handed over, "
			    "%llu handover%s failed", (unsigned long long)moved,
			    (unsigned long long)failed, PLURAL(failed));
	}
	link = chan_link();
	if (link != M.chat_link) {
		/* said once for the whole host, not by each worker */
		if (link == CHAN_LINK_DOWN)
			log_warnx("chat: Redis cannot be reached: chat stays within this "
			    "host until it can (retrying)");
		else if (link == CHAN_LINK_UP && M.chat_link == CHAN_LINK_DOWN)
			log_info("chat: Redis can be reached again: chat spans the hosts");
		M.chat_link = link;
	}
	if (link == CHAN_LINK_DOWN)
		strncat(counts, ", chat link to other hosts down",
		    sizeof(counts) - strlen(counts) - 1);
	if (M.stopping)
		notify_status("stopping: %ld client%s left", t.conns, PLURAL(t.conns));
	else if (M.note[0] != '\0')
		notify_status("%s; %s", M.note, counts);
	else
		notify_status("%s", counts);
}

/* ---- workers ---- */

static void
close_inherited(const int *keep, size_t nkeep)
{
	size_t i, k;

	for (i = 0; i < M.socks.n; i++) {
		bool kept = false;

		for (k = 0; k < nkeep && !kept; k++)
			kept = keep[k] == M.socks.v[i].fd;
		if (!kept)
			close(M.socks.v[i].fd);
	}
	for (i = 0; i < MAX_CTL_CLIENTS; i++)
		if (M.ctl_clients[i] >= 0)
			close(M.ctl_clients[i]);
	close(M.epfd);
	close(M.sigfd);
	close(M.timerfd);
	if (M.ctlfd >= 0)
		close(M.ctlfd);
	if (M.next_ctlfd >= 0)
		close(M.next_ctlfd);
}

static int
spawn(struct generation *g)
{
	struct worker_args a;
	int slot, theirs;
	pid_t pid;

	for (slot = 0; slot < FK_MAX_SLOTS; slot++)
		if (M.wk[slot].pid == 0 &&
		    atomic_load(&scoreboard->slot[slot].state) == SLOT_FREE)
			break;
	if (slot == FK_MAX_SLOTS) {
		log_warnx("no free worker slot");
		return -1;
	}
	atomic_fetch_add(&scoreboard->slot[slot].epoch, 1);
	atomic_store(&scoreboard->slot[slot].state, SLOT_STARTING);
	atomic_store(&scoreboard->slot[slot].generation, g->id);
	atomic_store(&scoreboard->slot[slot].started_ms, now_ms());
	atomic_store(&scoreboard->slot[slot].heartbeat_ms, now_ms());
	/* without its pair a worker serves, but sessions cannot move to it */
	if (ho_master_pair(slot, &theirs) < 0) {
		log_warn("cannot make the handover socket of worker %d", slot);
		theirs = -1;
	}
	pid = fork();
	if (pid < 0) {
		log_warn("cannot fork a worker");
		atomic_store(&scoreboard->slot[slot].state, SLOT_FREE);
		if (theirs >= 0)
			close(theirs);
		return -1;
	}
	if (pid == 0) {
		a.cfg = g->cfg;
		a.lfds = g->lfds;
		a.slot = slot;
		a.generation = g->id;
		a.master_wake = M.wakefd;
		a.hand_fd = theirs;
		a.uid = M.uid;
		a.gid = M.gid;
		close_inherited(g->lfds, g->cfg->nlisteners);
		ho_master_close_all();
		atomic_store(&scoreboard->slot[slot].pid, getpid());
		worker_run(&a);
	}
	atomic_store(&scoreboard->slot[slot].pid, pid);
	if (theirs >= 0) {
		struct epoll_event ev = { .events = EPOLLIN,
		    .data.u64 = TAG_HAND | ((uint64_t)slot << 8) };

		close(theirs);
		if (epoll_ctl(M.epfd, EPOLL_CTL_ADD, ho_master_fd(slot), &ev) != 0)
			log_warn("cannot watch the handover socket of worker %d", slot);
	}
	memset(&M.wk[slot], 0, sizeof(M.wk[slot]));
	M.wk[slot].pid = pid;
	M.wk[slot].gen = g->id;
	M.wk[slot].started_ms = now_ms();
	log_debug("started worker %d (pid %ld, generation %u)", slot, (long)pid, g->id);
	return slot;
}

static void
retire(int slot, int sig)
{
	if (M.wk[slot].pid <= 0)
		return;
	M.wk[slot].retiring = true;
	kill(M.wk[slot].pid, sig);
}

/* Retire a worker gracefully: its sessions move to the others, or drain. */
static void
retire_gracefully(int slot, const struct fk_config *cfg)
{
	if (M.wk[slot].pid <= 0)
		return;
	/* told on its handover socket: a stray signal never retires a worker */
	if (cfg->reload_sessions == RELOAD_HANDOVER && ho_master_retire(slot) == 0)
		M.wk[slot].retiring = true;
	else
		retire(slot, SIGQUIT);
}

/*
 * Where a session handed over goes: the worker of the serving generation
 * that holds the fewest, counting those already on their way to it.
 */
static int
pick_target(int from)
{
	long best = -1;
	int i, to = -1;

	/* an upgrade: every session goes to the new master's workers */
	if (M.up.handing && from != HO_LINK && ho_master_fd(HO_LINK) >= 0)
		return HO_LINK;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		long load;

		if (i == from || M.wk[i].pid <= 0 || M.wk[i].gen != M.cur.id ||
		    !M.wk[i].ready || M.wk[i].retiring || M.wk[i].recycle ||
		    atomic_load(&scoreboard->slot[i].state) != SLOT_READY)
			continue;
		load = atomic_load(&scoreboard->slot[i].conns) + ho_master_pending(i);
		if (best < 0 || load < best) {
			best = load;
			to = i;
		}
	}
	return to;
}

/* Keep the current generation at its target size. */
static void
ensure_workers(void)
{
	uint64_t now = now_ms();
	int have, i;

	if (M.stopping || M.giving_up || M.up.handing)
		return;
	have = live_workers(M.cur.id, false);
	while (have < M.target && now >= M.backoff_until) {
		if (spawn(&M.cur) < 0)
			break;
		have++;
	}
	/* one fewer (SIGTTOU): the newest goes first */
	while (have > M.target) {
		int newest = -1;

		for (i = 0; i < FK_MAX_SLOTS; i++)
			if (M.wk[i].pid > 0 && M.wk[i].gen == M.cur.id && !M.wk[i].retiring &&
			    !M.wk[i].recycle &&
			    (newest < 0 || M.wk[i].started_ms > M.wk[newest].started_ms))
				newest = i;
		if (newest < 0)
			break;
		log_info("retiring worker %d (pid %ld): %d wanted", newest,
		    (long)M.wk[newest].pid, M.target);
		retire_gracefully(newest, M.cur.cfg);
		have--;
	}
}

/* ---- reload bookkeeping for the control socket ---- */

static void start_reload(void);
static int ctl_listen(const char *path, char *err, size_t errlen);

/*
 * Answer the clients waiting for reload number upto or an earlier one.  A
 * request that came while a reload was under way waits for the next one,
 * which reads the file after the request: its answer is about that file.
 */
static void
ctl_answer(unsigned upto, bool ok, const char *msg)
{
	char line[512];
	int i, n;

	n = snprintf(line, sizeof(line), "%s %s\n", ok ? "OK" : "ERR", msg);
	for (i = 0; i < MAX_CTL_CLIENTS; i++) {
		if (M.ctl_clients[i] < 0 || !M.ctl_waiting[i] || M.ctl_seq[i] > upto ||
		    M.ctl_upgrade[i])
			continue;
		if (write(M.ctl_clients[i], line, (size_t)MIN(n, (int)sizeof(line) - 1)) < 0)
			log_debug("control client went away");
		close(M.ctl_clients[i]);
		M.ctl_clients[i] = -1;
		M.ctl_waiting[i] = false;
	}
}

/* Answer the clients waiting for the upgrade. */
static void
ctl_answer_upgrade(bool ok, const char *msg)
{
	char line[512];
	int i, n;

	n = snprintf(line, sizeof(line), "%s %s\n", ok ? "OK" : "ERR", msg);
	for (i = 0; i < MAX_CTL_CLIENTS; i++) {
		if (M.ctl_clients[i] < 0 || !M.ctl_upgrade[i])
			continue;
		if (write(M.ctl_clients[i], line, (size_t)MIN(n, (int)sizeof(line) - 1)) < 0)
			log_debug("control client went away");
		close(M.ctl_clients[i]);
		M.ctl_clients[i] = -1;
		M.ctl_waiting[i] = false;
		M.ctl_upgrade[i] = false;
	}
}

static void
reload_failed(const char *why)
{
	log_err("reload failed: %s", why);
	atomic_fetch_add(&scoreboard->reload_failures, 1);
	snprintf(M.note, sizeof(M.note), "reload failed: %s", why);
	M.note_backoff = false;
	update_status(true);
	notify_ready();
	ctl_answer(M.reload_seq, false, M.note);
	if (M.reload_again) {
		M.reload_again = false;
		start_reload();
	}
}

static void
abandon_next(void)
{
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (M.wk[i].pid > 0 && M.wk[i].gen == M.next.id)
			retire(i, SIGTERM);
	free(M.next.lfds);
	config_free(M.next.cfg);
	M.next.cfg = NULL;
	M.next.lfds = NULL;
	lsock_prune(&M.socks, M.cur.cfg);
	if (M.next_ctlfd >= 0) {
		close(M.next_ctlfd);
		unlink(M.next_ctlpath);
		M.next_ctlfd = -1;
	}
	M.next_ctl_moves = false;
}

static int
resolve_user(const struct fk_config *cfg, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
	struct passwd *pw;
	struct group *gr;

	*uid = (uid_t)-1;
	*gid = (gid_t)-1;
	if (geteuid() != 0)
		return 0;
	if (cfg->allow_root && (strcmp(cfg->user, "root") == 0 || cfg->user[0] == '\0'))
		return 0;
	if (cfg->user[0] == '\0' || strcmp(cfg->user, "root") == 0) {
		snprintf(err, errlen, "%s: refusing to run workers as root: set 'user' to an "
		    "unprivileged user, or set 'allow_root = true' if you really mean it",
		    cfg->path);
		return -1;
	}
	if ((pw = getpwnam(cfg->user)) == NULL) {
		snprintf(err, errlen, "%s: user '%s' does not exist (create it, or set "
		    "'user' to an existing unprivileged user)", cfg->path, cfg->user);
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	if (cfg->group[0] != '\0') {
		if ((gr = getgrnam(cfg->group)) == NULL) {
			snprintf(err, errlen, "%s: group '%s' does not exist", cfg->path,
			    cfg->group);
			return -1;
		}
		*gid = gr->gr_gid;
	}
	if (*uid == 0 && !cfg->allow_root) {
		snprintf(err, errlen, "%s: user '%s' is root: refusing to run workers as root "
		    "unless 'allow_root = true'", cfg->path, cfg->user);
		return -1;
	}
	return 0;
}

/* Services that share state between workers set it up before any fork. */
static int
services_master_init(const struct fk_config *cfg, char *err, size_t errlen)
{
	int i;

	for (i = 0; services[i] != NULL; i++) {
		if (services[i]->master_init == NULL || !service_used(cfg, i))
			continue;
		if (services[i]->master_init(cfg, cfg->service_conf[i]) != 0) {
			snprintf(err, errlen, "cannot set up the %s service: %s",
			    services[i]->name, strerror(errno));
			return -1;
		}
	}
	return 0;
}

static void
start_reload(void)
{
	struct config_errors errs;
	struct fk_config *cfg;
	char err[512];
	uid_t uid;
	gid_t gid;
	int *lfds, i;

	if (M.stopping)
		return;
	if (M.next.cfg != NULL || M.old_accepting_until != 0) {
		if (!M.reload_again)
			log_info("reload requested while one is under way: it follows once "
			    "that one is done");
		M.reload_again = true;
		return;
	}
	M.reload_seq++;
	M.reload_t0 = now_ms();
	notify_reloading();
	log_info("reloading %s", M.cur.cfg->path);
	cfg = config_load(M.cur.cfg->path, &errs);
	if (cfg == NULL) {
		for (i = 1; i < errs.count; i++)
			log_err("%s", errs.msg[i]);
		reload_failed(errs.msg[0]);
		return;
	}
	if (resolve_user(cfg, &uid, &gid, err, sizeof(err)) != 0 ||
	    services_master_init(cfg, err, sizeof(err)) != 0) {
		config_free(cfg);
		reload_failed(err);
		return;
	}
	lfds = calloc(cfg->nlisteners, sizeof(*lfds));
	if (lfds == NULL || lsock_bind_config(&M.socks, cfg, lfds, err, sizeof(err)) != 0) {
		if (lfds == NULL)
			snprintf(err, sizeof(err), "out of memory");
		free(lfds);
		config_free(cfg);
		reload_failed(err);
		return;
	}
	/* a new control socket path: open it now, the old one stays until the
	 * new generation serves (a failure leaves everything as it was) */
	master_control_path(cfg, M.next_ctlpath, sizeof(M.next_ctlpath));
	M.next_ctl_moves = strcmp(M.next_ctlpath, M.ctlpath) != 0;
	M.next_ctlfd = -1;
	if (M.next_ctl_moves && M.next_ctlpath[0] != '\0' &&
	    (M.next_ctlfd = ctl_listen(M.next_ctlpath, err, sizeof(err))) < 0) {
		char why[700];

		snprintf(why, sizeof(why), "%s: %s", cfg->path, err);
		M.next_ctl_moves = false;
		free(lfds);
		config_free(cfg);
		lsock_prune(&M.socks, M.cur.cfg);
		reload_failed(why);
		return;
	}
	M.uid = uid;
	M.gid = gid;
	scoreboard_listeners(cfg);
	M.next.cfg = cfg;
	M.next.lfds = lfds;
	M.next.id = M.cur.id + 1;
	M.next_deadline = now_ms() + RELOAD_START_MS;
	log_set_level(cfg->log_level);
	for (i = 0; i < cfg->workers; i++)
		if (spawn(&M.next) < 0)
			break;
}

/* The new generation serves: retire the old one and swap. */
static void
finish_reload(void)
{
	int i, n = 0;

	/* said once the last old worker is gone (handover_done) */
	M.ho_reload = true;
	M.ho_moved0 = atomic_load(&scoreboard->handed_over);
	M.ho_failed0 = atomic_load(&scoreboard->handover_failed);
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		if (M.wk[i].pid > 0 && M.wk[i].gen != M.next.id) {
			retire_gracefully(i, M.next.cfg);
			n++;
		}
	}
	if (n == 0)
		M.ho_reload = false;
	free(M.cur.lfds);
	config_free(M.cur.cfg);
	M.cur = M.next;
	M.next.cfg = NULL;
	M.next.lfds = NULL;
	M.target = M.cur.cfg->workers;
	lsock_prune(&M.socks, M.cur.cfg);
	atomic_store(&scoreboard->generation, M.cur.id);
	atomic_store(&scoreboard->workers, M.target);
	atomic_store(&scoreboard->threads, M.cur.cfg->threads);
	if (M.next_ctl_moves) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_CTL };

		if (M.ctlfd >= 0) {
			epoll_ctl(M.epfd, EPOLL_CTL_DEL, M.ctlfd, NULL);
			close(M.ctlfd);
			unlink(M.ctlpath);
		}
		log_info("control socket moved from %s to %s",
		    M.ctlpath[0] != '\0' ? M.ctlpath : "(none)",
		    M.next_ctlpath[0] != '\0' ? M.next_ctlpath : "(none)");
		M.ctlfd = M.next_ctlfd;
		memcpy(M.ctlpath, M.next_ctlpath, sizeof(M.ctlpath));
		M.next_ctlfd = -1;
		M.next_ctl_moves = false;
		if (M.ctlfd >= 0)
			epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.ctlfd, &ev);
	}
	/* READY=1 once no old worker accepts any more (reload_settled) */
	M.old_accepting_until = now_ms() + OLD_STOP_MS;
}

/* Is an old-generation worker still accepting? */
static bool
old_accepting(void)
{
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++) {
		int st;

		if (M.wk[i].pid <= 0 || M.wk[i].gen == M.cur.id)
			continue;
		st = atomic_load(&scoreboard->slot[i].state);
		if (st == SLOT_READY || st == SLOT_STARTING)
			return true;
	}
	return false;
}

/* After finish_reload: every new connection now gets the new configuration. */
static void
reload_settled(void)
{
	if (M.old_accepting_until == 0)
		return;
	if (old_accepting()) {
		if (now_ms() < M.old_accepting_until)
			return;
		log_warnx("old workers did not stop accepting within %d ms", OLD_STOP_MS);
	}
	M.old_accepting_until = 0;
	atomic_fetch_add(&scoreboard->reloads, 1);
	snprintf(M.note, sizeof(M.note), "reloaded: generation %u, %d workers", M.cur.id,
	    M.target);
	M.note_backoff = false;
	log_info("%s", M.note);
	notify_status("%s", M.note);
	notify_ready();
	ctl_answer(M.reload_seq, true, M.note);
	M.last_status_ms = now_ms();
	if (M.reload_again) {
		M.reload_again = false;
		start_reload();
	}
}

/* ---- upgrades ---- */

/*
 * An upgrade starts the binary at the path this one was started from (a
 * package upgrade has put the new one there) as a new master, with our
 * listening sockets (LISTEN_FDS, as systemd passes them), our control
 * socket, and one end of a link.  Once its workers serve it says so on the
 * link; our workers then hand every session over, through us and the
 * link, to its workers, and we go.  A new master that fails to start, or
 * dies on the way, leaves us serving: what it did not take stays here.
 */
static char	 self_path[PATH_MAX];
static char	*const *self_argv;

void
master_set_argv(char *const *argv)
{
	self_argv = argv;
}

/* In the child: the new binary, with what it inherits in place. */
static void __attribute__((noreturn))
exec_upgrade(int link, int *keep)
{
	char env[64], *own;
	int n = 0, i, fd;
	sigset_t none;

	/* which of them this forkd opened itself (the others are systemd's) */
	if ((own = calloc(M.socks.n + 1, 1)) == NULL)
		_exit(127);
	for (i = 0; i < (int)M.socks.n; i++) {
		own[i] = M.socks.v[i].from_systemd ? '0' : '1';
		keep[n++] = M.socks.v[i].fd;
	}
	setenv("FORKD_UPGRADE_OWN", own, 1);
	keep[n] = link;
	keep[n + 1] = M.ctlfd;
	/* out of the way first, then to 3, 4, ... in order */
	for (i = 0; i < n + 2; i++)
		if (keep[i] >= 0 && (keep[i] = fcntl(keep[i], F_DUPFD_CLOEXEC, 1000)) < 0)
			_exit(127);
	for (i = 0; i < n + 2; i++) {
		if (keep[i] < 0)
			continue;
		fd = SD_LISTEN_FDS_START + i;
		if (dup2(keep[i], fd) < 0)
			_exit(127);
	}
	snprintf(env, sizeof(env), "%d", n);
	setenv("LISTEN_FDS", env, 1);
	snprintf(env, sizeof(env), "%ld", (long)getpid());
	setenv("LISTEN_PID", env, 1);
	/* systemd's watchdog is the new master's to feed once it is main */
	if (getenv("WATCHDOG_USEC") != NULL)
		setenv("WATCHDOG_PID", env, 1);
	unsetenv("LISTEN_FDNAMES");
	snprintf(env, sizeof(env), "%d %d", SD_LISTEN_FDS_START + n,
	    M.ctlfd >= 0 ? SD_LISTEN_FDS_START + n + 1 : -1);
	setenv("FORKD_UPGRADE", env, 1);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execv(self_path, self_argv);
	_exit(127);
}

static void
start_upgrade(void)
{
	int sv[2], *keep;
	pid_t pid;

	if (M.stopping || M.up.active) {
		ctl_answer_upgrade(false, M.stopping ? "the daemon is stopping" :
		    "an upgrade is under way");
		return;
	}
	if (M.next.cfg != NULL || M.old_accepting_until != 0 || self_argv == NULL) {
		ctl_answer_upgrade(false, "a reload is under way: upgrade once it is done");
		return;
	}
	if ((keep = calloc(M.socks.n + 2, sizeof(*keep))) == NULL ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
		log_warn("upgrade: cannot make the link to the new master");
		ctl_answer_upgrade(false, "cannot make the link to the new master");
		free(keep);
		return;
	}
	notify_reloading();
	log_info("upgrading: starting %s", self_path);
	if ((pid = fork()) < 0) {
		log_warn("upgrade: cannot fork");
		close(sv[0]);
		close(sv[1]);
		free(keep);
		ctl_answer_upgrade(false, "cannot fork");
		notify_ready();
		return;
	}
	if (pid == 0) {
		close(sv[0]);
		exec_upgrade(sv[1], keep);
	}
	free(keep);
	close(sv[1]);
	ho_master_link(sv[0]);
	{
		struct epoll_event ev = { .events = EPOLLIN,
		    .data.u64 = TAG_HAND | ((uint64_t)HO_LINK << 8) };

		epoll_ctl(M.epfd, EPOLL_CTL_ADD, sv[0], &ev);
	}
	M.up.active = true;
	M.up.handing = false;
	M.up.pid = pid;
	M.up.t0 = now_ms();
	M.up.deadline = now_ms() + RELOAD_START_MS;
	M.up.moved0 = atomic_load(&scoreboard->handed_over);
}

/* The new master serves: hand everything over and step aside. */
static void
upgrade_ready(void)
{
	char status[200];
	bool moves = ho_master_link_version() == HO_VERSION &&
	    M.cur.cfg->reload_sessions == RELOAD_HANDOVER;
	int i;

	M.up.handing = true;
	if (!moves)
		log_warnx("upgrade: the new forkd reads sessions of version %u, this one "
		    "writes %u: sessions drain instead", ho_master_link_version(), HO_VERSION);
	log_info("upgrade: the new master (pid %ld) serves; %s", (long)M.up.pid,
	    moves ? "handing the sessions over" : "draining");
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		if (M.wk[i].pid <= 0)
			continue;
		if (moves && ho_master_retire(i) == 0)
			M.wk[i].retiring = true;
		else
			retire(i, SIGQUIT);
	}
	/* the control socket is the new master's now */
	if (M.ctlfd >= 0)
		epoll_ctl(M.epfd, EPOLL_CTL_DEL, M.ctlfd, NULL);
	snprintf(status, sizeof(status), "upgraded: pid %ld serves", (long)M.up.pid);
	notify_mainpid(M.up.pid, status);
}

/* The new master is gone before it took everything: we serve on. */
static void
upgrade_lost(const char *why)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_CTL };

	ho_master_gone(HO_LINK, pick_target);
	log_err("upgrade failed: %s%s", why, M.up.handing ? "; the sessions it did not "
	    "take stay here, with new workers of this forkd" : "");
	if (M.up.handing) {
		notify_mainpid(getpid(), "upgrade failed: serving on");
		if (M.ctlfd >= 0)
			epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.ctlfd, &ev);
	} else {
		notify_ready();
	}
	snprintf(M.note, sizeof(M.note), "upgrade failed: %s", why);
	M.note_backoff = false;
	M.up.active = false;
	M.up.handing = false;
	update_status(true);
	ctl_answer_upgrade(false, M.note);
}

static void
on_link(void)
{
	int r = ho_master_event(HO_LINK, pick_target);

	if (M.up.active && !M.up.handing && ho_master_link_version() != 0)
		upgrade_ready();
	if (r < 0 && M.up.active)
		upgrade_lost("the new forkd exited before it took every session");
	else if (r < 0) {
		/* the old master is gone: we are the service's main process */
		ho_master_gone(HO_LINK, pick_target);
		if (M.up.quiet) {
			M.up.quiet = false;
			log_info("upgrade: the old master is gone");
			update_status(true);
		}
	}
}

/* ---- events ---- */

/*
 * Workers that served max_requests_per_worker are replaced one at a time:
 * marking one makes ensure_workers() fork its successor, and once that one
 * serves, the old one is retired gracefully.
 */
static void
handle_recycles(void)
{
	int i, busy = -1;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (M.wk[i].pid > 0 && M.wk[i].recycle && !M.wk[i].retiring)
			busy = i;
	if (busy < 0 && M.next.cfg == NULL && !M.stopping) {
		for (i = 0; i < FK_MAX_SLOTS; i++) {
			if (M.wk[i].pid > 0 && M.wk[i].ready && !M.wk[i].retiring &&
			    atomic_load(&scoreboard->slot[i].want_recycle)) {
				M.wk[i].recycle = true;
				atomic_fetch_add(&scoreboard->recycled, 1);
				log_info("replacing worker %d (pid %ld) after %llu connections", i,
				    (long)M.wk[i].pid,
				    (unsigned long long)atomic_load(&scoreboard->slot[i].served));
				ensure_workers();
				return;
			}
		}
		return;
	}
	if (busy >= 0 && live_workers(M.cur.id, true) >= M.target)
		retire_gracefully(busy, M.cur.cfg);
}

static void
on_worker_news(void)
{
	uint64_t v;
	int i;

	if (read(M.wakefd, &v, sizeof(v)) < 0)
		return;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		struct wk *w = &M.wk[i];
		int st;

		if (w->pid <= 0)
			continue;
		st = atomic_load(&scoreboard->slot[i].state);
		if (st == SLOT_READY && !w->ready) {
			w->ready = true;
			M.failed_starts = 0;
		}
	}
	if (M.note_backoff && live_workers(M.cur.id, true) >= M.target) {
		/* serving at full strength again: the crash-loop note is history */
		M.note_backoff = false;
		M.note[0] = '\0';
		update_status(true);
	}
	handle_recycles();
	if (M.next.cfg != NULL && live_workers(M.next.id, true) >= M.next.cfg->workers)
		finish_reload();
	reload_settled();
	if (!M.ready_sent && !M.stopping && live_workers(M.cur.id, true) >= M.target) {
		M.ready_sent = true;
		log_info("ready: %d workers × %d threads", M.target, M.cur.cfg->threads);
		/* an upgrade: the old master says READY=1 with our MAINPID= */
		if (!M.up.quiet)
			notify_ready();
		update_status(true);
		/* an upgrade: the old master hands its sessions over now */
		if (ho_master_fd(HO_LINK) >= 0 && ho_master_ready() != 0)
			log_warn("upgrade: cannot tell the old master we serve");
	}
}

/* The last old worker of a reload is gone: say what moved. */
static void
handover_done(void)
{
	uint64_t moved, failed;
	int i;

	for (i = 0; i < FK_MAX_SLOTS; i++)
		if (M.wk[i].pid > 0 && M.wk[i].gen != M.cur.id)
			return;
	M.ho_reload = false;
	moved = atomic_load(&scoreboard->handed_over) - M.ho_moved0;
	failed = atomic_load(&scoreboard->handover_failed) - M.ho_failed0;
	if (M.cur.cfg->reload_sessions == RELOAD_DRAIN) {
		log_info("reload took %llu ms: the old workers drained",
		    (unsigned long long)(now_ms() - M.reload_t0));
		return;
	}
	log_info("reload took %llu ms: %llu session%s handed over to the new workers%s",
	    (unsigned long long)(now_ms() - M.reload_t0), (unsigned long long)moved,
	    PLURAL(moved), failed > 0 ? ", some after a failed try" : "");
	if (failed > 0)
		log_warnx("%llu handover%s failed: those sessions stayed with their old "
		    "worker and were offered again", (unsigned long long)failed,
		    PLURAL(failed));
	/* the counts now; before the reload has settled its own line goes first */
	if (M.old_accepting_until == 0)
		update_status(true);
}

static void
give_up(const char *why)
{
	int i;

	log_err("giving up: %s", why);
	notify_status("failed: %s", why);
	M.giving_up = true;
	M.stopping = true;
	M.stop_deadline = now_ms() + 1000;
	for (i = 0; i < FK_MAX_SLOTS; i++)
		retire(i, SIGTERM);
}

static void
reap(void)
{
	for (;;) {
		char how[128];
		int status, slot;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		struct wk w;
		uint64_t lived;

		if (pid <= 0)
			return;
		for (slot = 0; slot < FK_MAX_SLOTS; slot++)
			if (M.wk[slot].pid == pid)
				break;
		if (slot == FK_MAX_SLOTS)
			continue;
		w = M.wk[slot];
		memset(&M.wk[slot], 0, sizeof(M.wk[slot]));
		/* what it answered before it died counts; the rest comes back */
		ho_master_gone(slot, pick_target);
		scoreboard_retire(slot);
		if (M.ho_reload && w.gen != M.cur.id)
			handover_done();
		lived = now_ms() - w.started_ms;
		describe_status(status, how, sizeof(how));
		if (w.recycle) {
			log_info("worker %d (pid %ld) replaced", slot, (long)pid);
			continue;
		}
		if (w.retiring || M.stopping) {
			log_debug("worker %d (pid %ld) %s", slot, (long)pid, how);
			continue;
		}
		atomic_fetch_add(&scoreboard->restarts, 1);
		if (w.hung)
			atomic_fetch_add(&scoreboard->restarts_hung, 1);
		log_warnx("worker %d (pid %ld) %s after %llu ms%s", slot, (long)pid, how,
		    (unsigned long long)lived, w.hung ? " (hung)" : "");
		if (M.next.cfg != NULL && w.gen == M.next.id && !w.ready) {
			snprintf(how, sizeof(how), "a worker of the new generation died "
			    "while starting");
			abandon_next();
			reload_failed(how);
			continue;
		}
		if (!w.ready && ++M.failed_starts >= GIVE_UP_AFTER) {
			char why[256];

			snprintf(why, sizeof(why), "%d workers in a row died before they could "
			    "serve (the last one %s)", M.failed_starts, how);
			give_up(why);
			continue;	/* the others still have to be reaped */
		}
		if (lived < FAST_DEATH_MS) {
			M.backoff_ms = M.backoff_ms ? MIN(M.backoff_ms * 2, BACKOFF_MAX_MS) :
			    BACKOFF_FIRST_MS;
			M.backoff_until = now_ms() + M.backoff_ms;
			snprintf(M.note, sizeof(M.note), "workers dying at start: next in %llu ms",
			    (unsigned long long)M.backoff_ms);
			M.note_backoff = true;
			log_warnx("%s", M.note);
			update_status(true);
		} else {
			M.backoff_ms = 0;
			M.backoff_until = 0;
		}
	}
}

static void
start_stop(bool now)
{
	int i;

	if (!M.stopping) {
		struct sb_totals t;

		scoreboard_totals(&t);
		M.stopping = true;
		notify_stopping();
		log_info("stopping: %d worker%s, %ld client%s", all_workers(),
		    PLURAL(all_workers()), t.conns, PLURAL(t.conns));
		update_status(true);
		ctl_answer(UINT_MAX, false, "the daemon is stopping");
		/* the port is free as soon as the workers let go of it */
		lsock_close_all(&M.socks);
		M.stop_deadline = now_ms() + (uint64_t)M.cur.cfg->shutdown_timeout * 1000 + 500;
		for (i = 0; i < FK_MAX_SLOTS; i++)
			retire(i, SIGTERM);
	}
	if (now) {
		M.stop_now = true;
		for (i = 0; i < FK_MAX_SLOTS; i++)
			if (M.wk[i].pid > 0)
				kill(M.wk[i].pid, SIGKILL);
	}
}

static void
on_signal(void)
{
	struct signalfd_siginfo si;

	while (read(M.sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			reap();
			break;
		case SIGINT:
			start_stop(M.stopping);	/* a second one: now */
			break;
		case SIGTERM:
			start_stop(false);
			break;
		case SIGHUP:
			start_reload();
			break;
		case SIGUSR2:
			start_upgrade();
			break;
		case SIGTTIN:
			if (M.target < FK_MAX_WORKERS && !M.stopping) {
				M.target++;
				atomic_store(&scoreboard->workers, M.target);
				log_info("SIGTTIN: %d worker%s wanted", M.target, PLURAL(M.target));
			}
			break;
		case SIGTTOU:
			if (M.target > 1 && !M.stopping) {
				M.target--;
				atomic_store(&scoreboard->workers, M.target);
				log_info("SIGTTOU: %d worker%s wanted", M.target, PLURAL(M.target));
			}
			break;
		}
	}
}

static bool
workers_healthy(uint64_t now)
{
	int i;

	if (live_workers(M.cur.id, true) < M.target)
		return false;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		uint64_t hb;

		if (M.wk[i].pid <= 0 || !M.wk[i].ready)
			continue;
		hb = atomic_load(&scoreboard->slot[i].heartbeat_ms);
		if (older_than(now, hb, 5000))
			return false;
	}
	return true;
}

static void
check_heartbeats(uint64_t now)
{
	uint64_t limit;
	int i;

	if (M.cur.cfg->worker_timeout == 0)
		return;
	limit = (uint64_t)M.cur.cfg->worker_timeout * 1000;
	for (i = 0; i < FK_MAX_SLOTS; i++) {
		uint64_t hb;

		if (M.wk[i].pid <= 0 || M.wk[i].hung)
			continue;
		hb = atomic_load(&scoreboard->slot[i].heartbeat_ms);
		if (older_than(now, hb, limit)) {
			log_warnx("worker %d (pid %ld) missed its heartbeat for %llu ms: killing it",
			    i, (long)M.wk[i].pid, (unsigned long long)(now - hb));
			M.wk[i].hung = true;
			kill(M.wk[i].pid, SIGKILL);
		}
	}
}

static void
on_tick(void)
{
	uint64_t v, now = now_ms();

	if (read(M.timerfd, &v, sizeof(v)) < 0)
		return;
	if (now - M.sampled_ms >= SAMPLE_MS) {
		scoreboard_sample(&scoreboard->master_proc);
		M.sampled_ms = now;
	}
	if (M.stopping) {
		if (now >= M.stop_deadline)
			start_stop(true);
		update_status(false);
		return;
	}
	check_heartbeats(now);
	/* workers up for FAST_DEATH_MS since the last delayed start: the next
	 * early death begins a new series at BACKOFF_FIRST_MS */
	if (M.backoff_ms != 0 && now >= M.backoff_until + FAST_DEATH_MS &&
	    live_workers(M.cur.id, true) >= M.target) {
		M.backoff_ms = 0;
		M.backoff_until = 0;
		log_info("workers up for %d ms: crash-loop backoff reset", FAST_DEATH_MS);
	}
	handle_recycles();
	if (M.up.active && !M.up.handing && now >= M.up.deadline) {
		kill(M.up.pid, SIGTERM);
		upgrade_lost("the new forkd did not start in time");
	}
	if (M.next.cfg != NULL && now >= M.next_deadline) {
		abandon_next();
		reload_failed("the new generation did not start in time");
	}
	reload_settled();
	ensure_workers();
	update_status(false);
	if (M.wd_interval_ms > 0 && now - M.wd_last_ms >= M.wd_interval_ms &&
	    workers_healthy(now)) {
		notify_watchdog();
		M.wd_last_ms = now;
	}
}

/* ---- control socket ---- */

const char *
master_control_path(const struct fk_config *cfg, char *buf, size_t len)
{
	const char *rt = getenv("RUNTIME_DIRECTORY");

	if (cfg->control_socket[0] != '\0')
		snprintf(buf, len, "%s", cfg->control_socket);
	else if (rt != NULL && rt[0] != '\0' && strchr(rt, ':') == NULL)
		snprintf(buf, len, "%s/forkd.sock", rt);
	else
		buf[0] = '\0';
	return buf;
}

/* Listen on a control socket at path: the descriptor, or -1 and why. */
static int
ctl_listen(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	int fd, probe;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "control socket path too long: %s", path);
		return -1;
	}
	strcpy(sun.sun_path, path);
	/* a live forkd already answers there: do not steal its socket */
	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		close(probe);
		snprintf(err, errlen, "another forkd is running (it answers on %s)", path);
		return -1;
	}
	if (probe >= 0)
		close(probe);
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 ||
	    chmod(path, 0600) != 0 || listen(fd, 8) != 0) {
		snprintf(err, errlen, "cannot open the control socket %s: %s", path,
		    strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int
ctl_open(void)
{
	char err[300];

	master_control_path(M.cur.cfg, M.ctlpath, sizeof(M.ctlpath));
	if (M.ctlfd >= 0) {
		/* an upgrade: the old master's, still bound to its path */
		fcntl(M.ctlfd, F_SETFD, FD_CLOEXEC);
		fcntl(M.ctlfd, F_SETFL, fcntl(M.ctlfd, F_GETFL) | O_NONBLOCK);
		return 0;
	}
	M.ctlfd = -1;
	if (M.ctlpath[0] == '\0')
		return 0;
	if ((M.ctlfd = ctl_listen(M.ctlpath, err, sizeof(err))) < 0) {
		log_err("%s", err);
		return -1;
	}
	return 0;
}

static void
on_ctl_accept(void)
{
	struct epoll_event ev;
	int fd, i;

	while ((fd = accept4(M.ctlfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
		for (i = 0; i < MAX_CTL_CLIENTS; i++)
			if (M.ctl_clients[i] < 0)
				break;
		if (i == MAX_CTL_CLIENTS) {
			if (write(fd, "ERR busy\n", 9) < 0)
				log_debug("control client went away");
			close(fd);
			continue;
		}
		M.ctl_clients[i] = fd;
		M.ctl_waiting[i] = false;
		M.ctl_upgrade[i] = false;
		ev.events = EPOLLIN;
		ev.data.u64 = TAG_CTL_CLIENT | ((uint64_t)i << 8);
		epoll_ctl(M.epfd, EPOLL_CTL_ADD, fd, &ev);
	}
}

static void
on_ctl_client(int i)
{
	char buf[64];
	ssize_t n;
	int fd = M.ctl_clients[i];

	n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0 || M.ctl_waiting[i]) {
		close(fd);	/* also leaves the epoll set */
		M.ctl_clients[i] = -1;
		M.ctl_waiting[i] = false;
		return;
	}
	buf[n] = '\0';
	if (strcmp(buf, "reload\n") == 0 && M.stopping) {
		if (write(fd, "ERR the daemon is stopping\n", 27) < 0)
			log_debug("control client went away");
		close(fd);
		M.ctl_clients[i] = -1;
	} else if (strcmp(buf, "reload\n") == 0) {
		/* the reload that starts now, or the one after the one under way */
		M.ctl_waiting[i] = true;
		M.ctl_seq[i] = M.reload_seq + 1;
		start_reload();
	} else if (strcmp(buf, "upgrade\n") == 0) {
		M.ctl_waiting[i] = true;
		M.ctl_upgrade[i] = true;
		start_upgrade();
	} else {
		if (write(fd, "ERR unknown request (try: reload, upgrade)\n", 43) < 0)
			log_debug("control client went away");
		close(fd);
		M.ctl_clients[i] = -1;
	}
}

int
master_request(const struct fk_config *cfg, const char *what)
{
	struct sockaddr_un sun;
	struct pollfd pfd;
	char path[108], reply[1024], req[32];
	size_t got = 0;
	int fd;

	master_control_path(cfg, path, sizeof(path));
	if (path[0] == '\0') {
		fprintf(stderr, "forkd: no control socket: set 'control_socket' in %s "
		    "(under systemd RuntimeDirectory= provides one)\n", cfg->path);
		return 1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = errno;

		fprintf(stderr, "forkd: cannot reach the running forkd at %s: %s\n", path,
		    strerror(e));
		if (e == ENOENT || e == ECONNREFUSED)
			fprintf(stderr, "forkd: is it running with %s? If control_socket was "
			    "changed since it last loaded the file, send it SIGHUP: that reload "
			    "moves the control socket\n", cfg->path);
		return 1;
	}
	snprintf(req, sizeof(req), "%s\n", what);
	if (write_full(fd, req, strlen(req)) != 0) {
		fprintf(stderr, "forkd: cannot send the %s request: %s\n", what,
		    strerror(errno));
		return 1;
	}
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (got < sizeof(reply) - 1) {
		ssize_t n;
		int r = poll(&pfd, 1, CTL_TIMEOUT_MS);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fprintf(stderr, "forkd: no answer to the %s request in %d s\n",
			    what, CTL_TIMEOUT_MS / 1000);
			return 1;
		}
		n = read(fd, reply + got, sizeof(reply) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(reply, '\n', got) != NULL)
			break;
	}
	close(fd);
	reply[got] = '\0';
	reply[strcspn(reply, "\n")] = '\0';
	if (strncmp(reply, "OK ", 3) == 0) {
		printf("%s\n", reply + 3);
		return 0;
	}
	fprintf(stderr, "forkd: %s\n", strncmp(reply, "ERR ", 4) == 0 ? reply + 4 :
	    got == 0 ? "the running forkd closed the connection without an answer" : reply);
	return 1;
}

/* ---- main loop ---- */

static int
setup(struct fk_config *cfg)
{
	struct epoll_event ev;
	struct itimerspec its;
	sigset_t set;
	char err[512];
	int i;

	memset(&M, 0, sizeof(M));
	M.cur.cfg = cfg;
	M.cur.id = 1;
	M.target = cfg->workers;
	M.ctlfd = -1;
	M.next_ctlfd = -1;
	for (i = 0; i < MAX_CTL_CLIENTS; i++)
		M.ctl_clients[i] = -1;

	if (resolve_user(cfg, &M.uid, &M.gid, err, sizeof(err)) != 0) {
		log_err("%s", err);
		return -1;
	}
	if (geteuid() == 0 && M.uid == (uid_t)-1)
		log_warnx("workers run as root (allow_root = true)");
	if (scoreboard_create() != 0) {
		log_warn("cannot map the scoreboard");
		return -1;
	}
	scoreboard_listeners(cfg);
	if (iplimit_create() != 0) {
		log_warn("cannot map the per-address table");
		return -1;
	}
	if (services_master_init(cfg, err, sizeof(err)) != 0) {
		log_err("%s", err);
		return -1;
	}

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTTIN);
	sigaddset(&set, SIGTTOU);
	sigaddset(&set, SIGQUIT);
	sigaddset(&set, SIGPIPE);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	M.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	M.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	M.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	M.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (M.sigfd < 0 || M.timerfd < 0 || M.wakefd < 0 || M.epfd < 0) {
		log_warn("cannot set up the event loop");
		return -1;
	}
	atomic_store(&scoreboard->generation, 1);
	atomic_store(&scoreboard->workers, M.target);
	atomic_store(&scoreboard->threads, cfg->threads);

	{
		const char *up = getenv("FORKD_UPGRADE");
		ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
		char *del;

		/* the file this binary came from: an upgrade starts what is there then */
		self_path[n > 0 ? n : 0] = '\0';
		if ((del = strstr(self_path, " (deleted)")) != NULL)
			*del = '\0';
		if (up != NULL) {
			int link = -1, ctl = -1;

			if (sscanf(up, "%d %d", &link, &ctl) == 2 && link >= 0) {
				fcntl(link, F_SETFD, FD_CLOEXEC);
				ho_master_link(link);
				ev.events = EPOLLIN;
				ev.data.u64 = TAG_HAND | ((uint64_t)HO_LINK << 8);
				epoll_ctl(M.epfd, EPOLL_CTL_ADD, link, &ev);
				M.ctlfd = ctl;
				M.up.quiet = true;
				log_info("upgrade: taking over from pid %ld", (long)getppid());
			}
			unsetenv("FORKD_UPGRADE");
		}
	}
	if (lsock_adopt_systemd(&M.socks, err, sizeof(err)) < 0) {
		log_err("%s", err);
		return -1;
	}
	{
		const char *own = getenv("FORKD_UPGRADE_OWN");

		/* an upgrade: the sockets the old master had opened itself */
		for (i = 0; own != NULL && own[i] != '\0'; i++)
			if (own[i] == '1')
				lsock_owned(&M.socks, SD_LISTEN_FDS_START + i);
		unsetenv("FORKD_UPGRADE_OWN");
	}
	if (lsock_check_unmatched(&M.socks, cfg, err, sizeof(err)) != 0) {
		log_err("%s", err);
		return -1;
	}
	M.cur.lfds = calloc(cfg->nlisteners, sizeof(*M.cur.lfds));
	if (M.cur.lfds == NULL ||
	    lsock_bind_config(&M.socks, cfg, M.cur.lfds, err, sizeof(err)) != 0) {
		log_err("%s", M.cur.lfds == NULL ? "out of memory" : err);
		return -1;
	}
	for (i = 0; i < (int)cfg->nlisteners; i++) {
		char at[64];

		log_info("listening on %s (%s)", sockaddr_text((struct sockaddr *)
		    &cfg->listeners[i].addr, at, sizeof(at)), cfg->listeners[i].service->name);
	}
	if (ctl_open() != 0)
		return -1;

	its.it_interval.tv_sec = 0;
	its.it_interval.tv_nsec = TICK_MS * 1000000L;
	its.it_value = its.it_interval;
	timerfd_settime(M.timerfd, 0, &its, NULL);
	ev.events = EPOLLIN;
	ev.data.u64 = TAG_SIGNAL;
	epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.sigfd, &ev);
	ev.data.u64 = TAG_TIMER;
	epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.timerfd, &ev);
	ev.data.u64 = TAG_WAKE;
	epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.wakefd, &ev);
	if (M.ctlfd >= 0) {
		ev.data.u64 = TAG_CTL;
		epoll_ctl(M.epfd, EPOLL_CTL_ADD, M.ctlfd, &ev);
	}
	M.wd_interval_ms = notify_watchdog_interval() / 1000;
	log_info("starting %d workers × %d threads (forkd %s)", M.target, cfg->threads,
	    PACKAGE_VERSION);
	return 0;
}

int
master_run(struct fk_config *cfg)
{
	struct sb_totals t;

	log_set_role("master");
	if (setup(cfg) != 0) {
		notify_status("failed to start");
		return 1;
	}
	ensure_workers();
	while ((!M.stopping || all_workers() > 0) && !(M.up.handing && all_workers() == 0)) {
		struct epoll_event ev[16];
		uint64_t now = now_ms();
		int i, n, wait = -1;

		/* a respawn held back by the crash-loop backoff is due on time,
		 * not at the next tick */
		if (!M.stopping && M.backoff_until > now && live_workers(M.cur.id, false) < M.target)
			wait = (int)(M.backoff_until - now);
		n = epoll_wait(M.epfd, ev, 16, wait);

		if (n < 0 && errno != EINTR) {
			log_warn("epoll_wait");
			break;
		}
		for (i = 0; i < n; i++) {
			uint64_t tag = ev[i].data.u64;

			switch (tag & 0xff) {
			case TAG_SIGNAL:	on_signal(); break;
			case TAG_TIMER:		on_tick(); break;
			case TAG_WAKE:		on_worker_news(); break;
			case TAG_CTL:		on_ctl_accept(); break;
			case TAG_CTL_CLIENT:	on_ctl_client((int)(tag >> 8)); break;
			case TAG_HAND:
				if ((int)(tag >> 8) == HO_LINK)
					on_link();
				else
					ho_master_event((int)(tag >> 8), pick_target);
				break;
			}
		}
		if (!M.stopping)
			ensure_workers();
	}
	scoreboard_totals(&t);
	if (M.up.handing) {
		char msg[300];
		uint64_t moved = atomic_load(&scoreboard->handed_over) - M.up.moved0;

		/* the new master has the sockets, the control socket's path too */
		snprintf(msg, sizeof(msg), "upgraded: pid %ld serves; %llu session%s handed "
		    "over in %llu ms", (long)M.up.pid, (unsigned long long)moved,
		    PLURAL(moved), (unsigned long long)(now_ms() - M.up.t0));
		log_info("%s", msg);
		ctl_answer_upgrade(true, msg);
		if (M.ctlfd >= 0)
			close(M.ctlfd);
		M.ctlfd = -1;
		M.ctlpath[0] = '\0';
		free(M.cur.lfds);
		config_free(M.cur.cfg);
		return 0;
	}
	if (M.ctlfd >= 0) {
		close(M.ctlfd);
		unlink(M.ctlpath);
	}
	if (M.next_ctlfd >= 0) {
		close(M.next_ctlfd);
		unlink(M.next_ctlpath);
	}
	log_info("stopped: %llu connection%s served, %llu request%s",
	    (unsigned long long)t.served, PLURAL(t.served),
	    (unsigned long long)t.requests, PLURAL(t.requests));
	free(M.cur.lfds);
	config_free(M.cur.cfg);
	return M.giving_up ? 1 : 0;
}
