#ifndef FORKD_MASTER_H
#define FORKD_MASTER_H

#include "config.h"

/* Run the daemon with this configuration; returns the exit status. */
int	master_run(struct fk_config *cfg);
/* Where the control socket of cfg lives ("" when none). */
const char *master_control_path(const struct fk_config *cfg, char *buf, size_t len);
/* forkd --reload / --upgrade: ask the running master ("reload",
 * "upgrade") and wait for the outcome; returns the exit status. */
int	master_request(const struct fk_config *cfg, const char *what);
/* The command line, for an upgrade to start the new binary the same way. */
void	master_set_argv(char *const *argv);

#endif
