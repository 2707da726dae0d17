
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int	log_level = LOG_INFO;
static bool	log_journal;
static char	log_role[32] = "forkd";

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
	[LOG_ERR] = "error", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void
log_init(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	/* Only when stderr really is the stream journald gave us. */
	log_journal = false;
	if (js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
	    fstat(STDERR_FILENO, &st) == 0 &&
	    (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino)
		log_journal = true;
}

void
log_set_level(int level)
{
	log_level = level;
}

int
log_get_level(void)
{
	return log_level;
}

void
log_set_role(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(log_role, sizeof(log_role), fmt, ap);
	va_end(ap);
}

static void
log_vwrite(int prio, const char *suffix, const char *fmt, va_list ap)
{
	char buf[2048];
	size_t n = 0;
	int r;

	if (prio > log_level)
		return;
	if (log_journal) {
		r = snprintf(buf, sizeof(buf), "<%d>%s[%ld]: ", prio, log_role,
		    (long)getpid());
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
		r = snprintf(buf + n, sizeof(buf) - n, ".%03ld %-7s %s[%ld]: ",
		    ts.tv_nsec / 1000000, level_names[prio], log_role,
		    (long)getpid());
	}
	if (r > 0)
		n += (size_t)r;
	if (n < sizeof(buf)) {
		r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
		if (r > 0)
			n += (size_t)r;
	}
	if (suffix != NULL && n < sizeof(buf)) {
		r = snprintf(buf + n, sizeof(buf) - n, ": %s", suffix);
		if (r > 0)
			n += (size_t)r;
	}
	if (n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* one write per line; a short write to a full pipe is not retried */
	if (write(STDERR_FILENO, buf, n) < 0)
		return;
}

void
log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(prio, NULL, fmt, ap);
	va_end(ap);
}

void
log_errno(int prio, const char *fmt, ...)
{
	char ebuf[128];
	const char *e;
	int saved = errno;
	va_list ap;

	e = strerror_r(saved, ebuf, sizeof(ebuf));
	va_start(ap, fmt);
	log_vwrite(prio, e, fmt, ap);
	va_end(ap);
	errno = saved;
}

void
fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}
