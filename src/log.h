#ifndef FORKD_LOG_H
#define FORKD_LOG_H

#include <syslog.h>

/*
 * Logging to stderr.  Under systemd (JOURNAL_STREAM names our stderr) every
 * line starts with an sd-daemon "<N>" priority prefix; otherwise it carries a
 * timestamp and a level word.  Each message is written with one write(2), so
 * lines from the master and the workers never interleave.
 */
void	log_init(void);
void	log_set_level(int level);
int	log_get_level(void);
/* the role shown in every line: "master", "worker 3" */
void	log_set_role(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void	log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* with ": strerror(errno)" appended */
void	log_errno(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void	fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define log_err(...)	log_msg(LOG_ERR, __VA_ARGS__)
#define log_warnx(...)	log_msg(LOG_WARNING, __VA_ARGS__)
#define log_warn(...)	log_errno(LOG_WARNING, __VA_ARGS__)
#define log_info(...)	log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)	log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
