#ifndef FORKD_MASTER_H
#define FORKD_MASTER_H

#include "config.h"

/* Run the daemon with this configuration; returns the exit status. */
int	master_run(struct fk_config *cfg);
/* Where the control socket of cfg lives ("" when none). */
const char *master_control_path(const struct fk_config *cfg, char *buf, size_t len);
/* forkd --reload: ask the running master and wait; returns the exit status. */
int	master_request_reload(const struct fk_config *cfg);

#endif
