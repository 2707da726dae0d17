#include <string.h>

#include "config.h"
#include "service.h"

extern const struct service service_echo, service_calc, service_chat, service_stats,
    service_metrics;

/* Adding a service: its own file, one line here, one in Makefile.am. */
const struct service *const services[] = {
	&service_echo,
	&service_calc,
	&service_chat,
	&service_stats,
	&service_metrics,
	NULL
};

const struct service *
service_find(const char *name)
{
	size_t i;

	for (i = 0; services[i] != NULL; i++)
		if (strcmp(services[i]->name, name) == 0)
			return services[i];
	return NULL;
}

int
service_index(const struct service *svc)
{
	int i;

	for (i = 0; services[i] != NULL; i++)
		if (services[i] == svc)
			return i;
	return -1;
}

int
service_used(const struct fk_config *cfg, int index)
{
	size_t i;

	for (i = 0; i < cfg->nlisteners; i++)
		if (cfg->listeners[i].service == services[index])
			return 1;
	return 0;
}
