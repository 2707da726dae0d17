/*
 * libFuzzer harness for config_load_string(): any text in, and the result
 * must be one of two things:
 *   - a config and no errors, every value inside its documented range, or
 *   - NULL and 1..FK_MAX_ERRORS messages, each "fuzz.conf..." and
 *     NUL-terminated inside its buffer.
 * A config that was returned is freed again; LeakSanitizer checks that the
 * failure paths free theirs too.
 *
 * Inputs that contain "@include" are skipped: libconfig would read the named
 * file from the file system, which makes a run depend on the machine (and a
 * path such as a device could block).  Includes are not part of what this
 * harness tests.
 *
 *   tests/fuzz/run 60          (builds and runs every harness)
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "config.h"
#include "service.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define NAME	"fuzz.conf"

static void
check_string(const char *s, size_t max, bool may_be_null)
{
	if (s == NULL) {
		if (!may_be_null)
			abort();
		return;
	}
	if (strlen(s) > max)
		abort();
	if (strpbrk(s, "\r\n") != NULL)
		abort();
}

static void
check_config(const struct fk_config *cfg)
{
	size_t i;

	if (cfg->path == NULL || strcmp(cfg->path, NAME) != 0)
		abort();
	if (cfg->workers < 1 || cfg->workers > FK_MAX_WORKERS)
		abort();
	if (cfg->threads < 1 || cfg->threads > 1024)
		abort();
	if (cfg->max_connections < 1 || cfg->max_connections_per_ip < 0)
		abort();
	if (cfg->backlog < 1 || cfg->idle_timeout < 1 || cfg->send_timeout < 1)
		abort();
	if (cfg->max_line < 64 || cfg->max_line > 1048576)
		abort();
	if (cfg->max_output < 4096)
		abort();
	if (cfg->shutdown_timeout < 0 || cfg->worker_timeout < 0 ||
	    cfg->max_requests_per_worker < 0)
		abort();
	if (cfg->log_level != LOG_ERR && cfg->log_level != LOG_WARNING &&
	    cfg->log_level != LOG_INFO && cfg->log_level != LOG_DEBUG)
		abort();
	check_string(cfg->user, 64, false);
	check_string(cfg->group, 64, false);
	check_string(cfg->control_socket, 107, false);

	if (cfg->nlisteners < 1 || cfg->nlisteners > 256 || cfg->listeners == NULL)
		abort();
	for (i = 0; i < cfg->nlisteners; i++) {
		const struct fk_listener *l = &cfg->listeners[i];

		if (l->service == NULL || service_find(l->service_name) != l->service)
			abort();
		if (l->port < 1 || l->port > 65535)
			abort();
		if (l->idle_timeout < 1 || l->idle_timeout > 86400)
			abort();
		if (l->addrlen == 0 || l->addrlen > sizeof(l->addr))
			abort();
		check_string(l->address, 64, false);
		check_string(l->banner, 512, true);
	}
	/* every service with settings has its struct, filled */
	for (i = 0; services[i] != NULL; i++)
		if (services[i]->settings != NULL && cfg->service_conf[i] == NULL)
			abort();
}

static void
check_errors(const struct config_errors *errs)
{
	int i;

	if (errs->count < 1 || errs->count > FK_MAX_ERRORS)
		abort();
	if (errs->dropped < 0 || (errs->dropped > 0 && errs->count != FK_MAX_ERRORS))
		abort();
	for (i = 0; i < errs->count; i++) {
		if (memchr(errs->msg[i], '\0', sizeof(errs->msg[i])) == NULL)
			abort();	/* not terminated inside its buffer */
		if (strncmp(errs->msg[i], NAME, strlen(NAME)) != 0)
			abort();
		if (strlen(errs->msg[i]) <= strlen(NAME))
			abort();	/* a name and no message */
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config_errors errs;	/* 16 KB: not on the stack */
	struct fk_config *cfg;
	char *text;

	if (size > FK_MAX_CONFIG_BYTES)
		return 0;
	text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	if (strcasestr(text, "@include") != NULL) {
		free(text);
		return 0;
	}

	/* poison the error list: config_load_string must reset it */
	memset(&errs, 0x5a, sizeof(errs));
	cfg = config_load_string(NAME, text, &errs);
	if (cfg != NULL) {
		if (errs.count != 0 || errs.dropped != 0)
			abort();
		check_config(cfg);
		config_free(cfg);
	} else {
		check_errors(&errs);
	}
	free(text);
	return 0;
}
