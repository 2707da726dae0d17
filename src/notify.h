#ifndef FORKD_NOTIFY_H
#define FORKD_NOTIFY_H

#include <stdint.h>
#include <sys/types.h>

/*
 * The only place that talks to systemd's notification socket.  Without
 * NOTIFY_SOCKET every call is a silent no-op.
 */
void	notify_ready(void);
void	notify_reloading(void);
void	notify_stopping(void);
/* An upgrade: another process is the service's main one from now on. */
void	notify_mainpid(pid_t, const char *status);
void	notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Half the watchdog interval in µs, or 0 when systemd asked for none. */
uint64_t notify_watchdog_interval(void);
void	notify_watchdog(void);

#endif
