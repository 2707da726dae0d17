
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "notify.h"

/* The last STATUS= sent, so an unchanged status is not sent again. */
static char last_status[256];

void
notify_ready(void)
{
	sd_notify(0, "READY=1");
}

void
notify_reloading(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	    (unsigned long long)ts.tv_nsec / 1000ULL);
}

void
notify_mainpid(pid_t pid, const char *status)
{
	/* one message: systemd checks who sends it once, before MAINPID= */
	sd_notifyf(0, "MAINPID=%ld\nREADY=1\nSTATUS=%s", (long)pid, status);
	snprintf(last_status, sizeof(last_status), "%s", status);
}

void
notify_stopping(void)
{
	sd_notify(0, "STOPPING=1");
}

void
notify_status(const char *fmt, ...)
{
	char buf[sizeof(last_status)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (strcmp(buf, last_status) == 0)
		return;
	memcpy(last_status, buf, sizeof(buf));
	sd_notifyf(0, "STATUS=%s", buf);
}

uint64_t
notify_watchdog_interval(void)
{
	uint64_t usec = 0;

	/* unset_environment=0: respawned workers never see it anyway */
	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	return usec / 2;
}

void
notify_watchdog(void)
{
	sd_notify(0, "WATCHDOG=1");
}
