/*
 * libconfig file -> struct fk_config.
 *
 * The keys are tables (name, type, bounds, default); the service groups come
 * from each service's own table, so adding a service never touches this file.
 * Every problem is reported as "FILE:LINE: message" and parsing goes on, so
 * one run of `forkd -t` shows all of them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <libconfig.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "service.h"
#include "util.h"

#define OFF(f)		offsetof(struct fk_config, f)
#define LOFF(f)		offsetof(struct fk_listener, f)

static const char *const log_level_names[] = {
	"error", "warning", "info", "debug", NULL
};
static const int log_level_prios[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

const struct setting config_global_settings[] = {
	{ "workers",		SET_INT, OFF(workers), 0, FK_MAX_WORKERS, 4, NULL, NULL },
	{ "threads",		SET_INT, OFF(threads), 1, 1024, 8, NULL, NULL },
	{ "max_connections",	SET_INT, OFF(max_connections), 1, 1000000, 10000, NULL, NULL },
	{ "max_connections_per_ip", SET_INT, OFF(max_connections_per_ip), 0, 1000000, 0, NULL, NULL },
	{ "backlog",		SET_INT, OFF(backlog), 1, 65535, 511, NULL, NULL },
	{ "idle_timeout",	SET_INT, OFF(idle_timeout), 1, 86400, 300, NULL, NULL },
	{ "send_timeout",	SET_INT, OFF(send_timeout), 1, 86400, 30, NULL, NULL },
	{ "max_line",		SET_INT, OFF(max_line), 64, 1048576, 8192, NULL, NULL },
	{ "max_output",		SET_INT, OFF(max_output), 4096, 67108864, 262144, NULL, NULL },
	{ "shutdown_timeout",	SET_INT, OFF(shutdown_timeout), 0, 3600, 10, NULL, NULL },
	{ "max_requests_per_worker", SET_INT, OFF(max_requests_per_worker), 0, 1000000000, 0, NULL, NULL },
	{ "worker_timeout",	SET_INT, OFF(worker_timeout), 0, 3600, 30, NULL, NULL },
	{ "user",		SET_STRING, OFF(user), 0, 64, 0, "forkd", NULL },
	{ "group",		SET_STRING, OFF(group), 0, 64, 0, "forkd", NULL },
	{ "allow_root",		SET_BOOL, OFF(allow_root), 0, 1, 0, NULL, NULL },
	{ "log_level",		SET_ENUM, OFF(log_level), 0, 0, 2, NULL, log_level_names },
	{ "control_socket",	SET_STRING, OFF(control_socket), 0, 107, 0, "", NULL },
	{ NULL, 0, 0, 0, 0, 0, NULL, NULL }
};

const struct setting config_listener_settings[] = {
	{ "address",	SET_STRING, LOFF(address), 0, 64, 0, NULL, NULL },
	{ "port",	SET_INT, LOFF(port), 1, 65535, 0, NULL, NULL },
	{ "service",	SET_STRING, LOFF(service_name), 0, 32, 0, NULL, NULL },
	{ "idle_timeout", SET_INT, LOFF(idle_timeout), 1, 86400, 0, NULL, NULL },
	{ "banner",	SET_STRING, LOFF(banner), 0, 512, 0, NULL, NULL },
	{ "protocol",	SET_ENUM, LOFF(protocol), 0, 0, PROTO_LINE, NULL, protocol_names },
	{ "ping_interval", SET_INT, LOFF(ping_interval), 0, 86400, 30, NULL, NULL },
	{ "max_header",	SET_INT, LOFF(max_header), 256, 1048576, 8192, NULL, NULL },
	{ "header_timeout", SET_INT, LOFF(header_timeout), 1, 3600, 10, NULL, NULL },
	{ NULL, 0, 0, 0, 0, 0, NULL, NULL }
};

/* listener keys that are not in the table: parsed on their own */
#define MAX_ORIGINS		64
#define MAX_ORIGIN_LEN		256

struct ctx {
	const char		*name;	/* the file, as the user named it */
	struct config_errors	*errs;
};

static void __attribute__((format(printf, 3, 4)))
cfg_error(struct ctx *ctx, const config_setting_t *cs, const char *fmt, ...)
{
	char msg[400];
	const char *file = NULL;
	int line = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (ctx->errs->count >= FK_MAX_ERRORS) {
		ctx->errs->dropped++;
		return;
	}
	if (cs != NULL) {
		file = config_setting_source_file(cs);
		line = (int)config_setting_source_line(cs);
	}
	if (file == NULL)
		file = ctx->name;
	if (line > 0)
		snprintf(ctx->errs->msg[ctx->errs->count], sizeof(ctx->errs->msg[0]),
		    "%s:%d: %s", file, line, msg);
	else
		snprintf(ctx->errs->msg[ctx->errs->count], sizeof(ctx->errs->msg[0]),
		    "%s: %s", file, msg);
	ctx->errs->count++;
}

static const char *
type_name(int type)
{
	switch (type) {
	case CONFIG_TYPE_GROUP:		return "a group";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:		return "an integer";
	case CONFIG_TYPE_FLOAT:		return "a decimal number";
	case CONFIG_TYPE_STRING:	return "a string";
	case CONFIG_TYPE_BOOL:		return "a boolean";
	case CONFIG_TYPE_ARRAY:		return "an array";
	case CONFIG_TYPE_LIST:		return "a list";
	default:			return "something else";
	}
}

static const char *
setting_type_name(const struct setting *s)
{
	switch (s->type) {
	case SET_INT:		return "an integer";
	case SET_BOOL:		return "true or false";
	case SET_STRING:
	case SET_ENUM:		return "a string";
	}
	return "?";
}

static const char *
setting_label(const config_setting_t *cs, char *buf, size_t len)
{
	const config_setting_t *parent = config_setting_parent(cs);
	const char *name = config_setting_name(cs);

	if (name == NULL)
		name = "?";
	if (parent != NULL && config_setting_name(parent) != NULL &&
	    config_setting_type(parent) == CONFIG_TYPE_GROUP &&
	    config_setting_parent(parent) != NULL &&
	    config_setting_type(config_setting_parent(parent)) != CONFIG_TYPE_LIST)
		snprintf(buf, len, "%s.%s", config_setting_name(parent), name);
	else
		snprintf(buf, len, "%s", name);
	return buf;
}

/* Store one value into base according to s; report and keep the default on error. */
static void
parse_setting(struct ctx *ctx, const struct setting *s, const config_setting_t *cs,
    void *base)
{
	int type = config_setting_type(cs);
	char label[96];
	char *p = (char *)base + s->offset;

	setting_label(cs, label, sizeof(label));
	switch (s->type) {
	case SET_INT: {
		long long v;

		if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64) {
			cfg_error(ctx, cs, "'%s' must be %s (got %s)", label,
			    setting_type_name(s), type_name(type));
			return;
		}
		v = config_setting_get_int64(cs);
		if (v < s->min || v > s->max) {
			cfg_error(ctx, cs, "'%s' must be between %lld and %lld (got %lld)",
			    label, s->min, s->max, v);
			return;
		}
		*(int *)(void *)p = (int)v;
		break;
	}
	case SET_BOOL:
		if (type != CONFIG_TYPE_BOOL) {
			cfg_error(ctx, cs, "'%s' must be %s (got %s)", label,
			    setting_type_name(s), type_name(type));
			return;
		}
		*(bool *)(void *)p = config_setting_get_bool(cs) != 0;
		break;
	case SET_STRING: {
		const char *v;
		char **dst = (char **)(void *)p;

		if (type != CONFIG_TYPE_STRING) {
			cfg_error(ctx, cs, "'%s' must be %s (got %s)", label,
			    setting_type_name(s), type_name(type));
			return;
		}
		v = config_setting_get_string(cs);
		if ((long long)strlen(v) > s->max) {
			cfg_error(ctx, cs, "'%s' is too long (%zu bytes; at most %lld)",
			    label, strlen(v), s->max);
			return;
		}
		if (strpbrk(v, "\r\n") != NULL) {
			cfg_error(ctx, cs, "'%s' must not contain a line break", label);
			return;
		}
		free(*dst);
		*dst = strdup(v);
		break;
	}
	case SET_ENUM: {
		const char *v;
		char known[128] = "";
		int i;

		if (type != CONFIG_TYPE_STRING) {
			cfg_error(ctx, cs, "'%s' must be %s (got %s)", label,
			    setting_type_name(s), type_name(type));
			return;
		}
		v = config_setting_get_string(cs);
		for (i = 0; s->names[i] != NULL; i++) {
			if (strcmp(v, s->names[i]) == 0) {
				*(int *)(void *)p = i;
				return;
			}
			if (i > 0)
				strncat(known, ", ", sizeof(known) - strlen(known) - 1);
			strncat(known, s->names[i], sizeof(known) - strlen(known) - 1);
		}
		if (strpbrk(v, "\r\n") != NULL || strlen(v) > 32)
			cfg_error(ctx, cs, "'%s' must be one of %s", label, known);
		else
			cfg_error(ctx, cs, "'%s' must be one of %s (got '%s')", label, known, v);
		break;
	}
	}
}

static void
apply_defaults(const struct setting *table, void *base)
{
	const struct setting *s;

	for (s = table; s->name != NULL; s++) {
		char *p = (char *)base + s->offset;

		switch (s->type) {
		case SET_INT:
		case SET_ENUM:
			*(int *)(void *)p = (int)s->def;
			break;
		case SET_BOOL:
			*(bool *)(void *)p = s->def != 0;
			break;
		case SET_STRING:
			*(char **)(void *)p = s->def_str != NULL ? strdup(s->def_str) : NULL;
			break;
		}
	}
}

static void
free_strings(const struct setting *table, void *base)
{
	const struct setting *s;

	if (base == NULL)
		return;
	for (s = table; s->name != NULL; s++) {
		if (s->type == SET_STRING) {
			char **p = (char **)(void *)((char *)base + s->offset);

			free(*p);
			*p = NULL;
		}
	}
}

static const struct setting *
find_setting(const struct setting *table, const char *name)
{
	for (; table != NULL && table->name != NULL; table++)
		if (strcmp(table->name, name) == 0)
			return table;
	return NULL;
}

/* The closest known name within a small edit distance, or NULL. */
static const char *
suggest(const char *name, const struct setting *table, const char *const *extra)
{
	const char *best = NULL;
	size_t bestd = strlen(name) < 4 ? 1 : 2, d;

	for (; table != NULL && table->name != NULL; table++) {
		d = edit_distance(name, table->name, bestd);
		if (d <= bestd && (best == NULL || d < bestd)) {
			best = table->name;
			bestd = d;
		}
	}
	for (; extra != NULL && *extra != NULL; extra++) {
		d = edit_distance(name, *extra, bestd);
		if (d <= bestd && (best == NULL || d < bestd)) {
			best = *extra;
			bestd = d;
		}
	}
	return best;
}

static void
unknown_setting(struct ctx *ctx, const config_setting_t *cs, const char *where,
    const struct setting *table, const char *const *extra)
{
	const char *name = config_setting_name(cs), *hint;

	hint = suggest(name, table, extra);
	if (hint != NULL)
		cfg_error(ctx, cs, "unknown setting '%s'%s%s (did you mean '%s'?)",
		    name, where[0] ? " in " : "", where, hint);
	else
		cfg_error(ctx, cs, "unknown setting '%s'%s%s", name,
		    where[0] ? " in " : "", where);
}

/* Parse a group against a table: unknown names reported, missing ones defaulted. */
static bool
name_in(const char *name, const char *const *list)
{
	for (; list != NULL && *list != NULL; list++)
		if (strcmp(name, *list) == 0)
			return true;
	return false;
}

/*
 * Parse a group against a table: unknown names reported (but those in
 * skip, which the caller parses), missing ones defaulted unless the base
 * already holds values (overlay).
 */
static void
parse_group_over(struct ctx *ctx, const config_setting_t *grp, const char *where,
    const struct setting *table, void *base, const char *const *skip, bool overlay)
{
	int i, n = config_setting_length(grp);

	if (!overlay)
		apply_defaults(table, base);
	for (i = 0; i < n; i++) {
		const config_setting_t *cs = config_setting_get_elem(grp, (unsigned)i);
		const char *name = config_setting_name(cs);
		const struct setting *s = find_setting(table, name);

		if (s != NULL)
			parse_setting(ctx, s, cs, base);
		else if (!name_in(name, skip))
			unknown_setting(ctx, cs, where, table, skip);
	}
}

static void
parse_group(struct ctx *ctx, const config_setting_t *grp, const char *where,
    const struct setting *table, void *base)
{
	parse_group_over(ctx, grp, where, table, base, NULL, false);
}

/* A copy of a settings struct: strings are duplicated. */
static void *
copy_settings(const struct setting *table, const void *src, size_t size)
{
	const struct setting *s;
	char *dst = malloc(size);

	if (dst == NULL)
		return NULL;
	memcpy(dst, src, size);
	for (s = table; s->name != NULL; s++) {
		if (s->type == SET_STRING) {
			char **p = (char **)(void *)(dst + s->offset);

			if (*p != NULL)
				*p = strdup(*p);
		}
	}
	return dst;
}

static int
parse_address(const char *text, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		*len = sizeof(*in);
		return 0;
	}
	if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*in6);
		return 0;
	}
	return -1;
}

static bool
addr_is_any(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)(const void *)ss)->sin_addr.s_addr ==
		    htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr);
}

static bool
addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET)
		return ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr ==
		    ((const struct sockaddr_in *)(const void *)b)->sin_addr.s_addr;
	return memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
	    &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr,
	    sizeof(struct in6_addr)) == 0;
}

static void
service_names(char *buf, size_t len)
{
	size_t i;

	buf[0] = '\0';
	for (i = 0; services[i] != NULL; i++) {
		if (i > 0)
			strncat(buf, ", ", len - strlen(buf) - 1);
		strncat(buf, services[i]->name, len - strlen(buf) - 1);
	}
}

/* allowed_origins = [ "https://chat.example.org", ... ]; */
static void
parse_origins(struct ctx *ctx, const config_setting_t *cs, struct fk_listener *l)
{
	int i, n, type = config_setting_type(cs);

	if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST) {
		cfg_error(ctx, cs, "'allowed_origins' must be a list of strings like "
		    "[ \"https://chat.example.org\" ] (got %s)", type_name(type));
		return;
	}
	n = config_setting_length(cs);
	if (n > MAX_ORIGINS) {
		cfg_error(ctx, cs, "'allowed_origins' has %d entries (at most %d)", n,
		    MAX_ORIGINS);
		return;
	}
	if (n == 0) {
		cfg_error(ctx, cs, "'allowed_origins' is empty: leave it out to allow "
		    "the listener's own host only");
		return;
	}
	l->allowed_origins = calloc((size_t)n, sizeof(char *));
	if (l->allowed_origins == NULL)
		return;
	for (i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(cs, (unsigned)i);
		const char *v;

		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			cfg_error(ctx, e, "'allowed_origins' entry %d must be a string "
			    "(got %s)", i + 1, type_name(config_setting_type(e)));
			continue;
		}
		v = config_setting_get_string(e);
		if (strlen(v) == 0 || strlen(v) > MAX_ORIGIN_LEN ||
		    strpbrk(v, " \t\r\n,") != NULL) {
			cfg_error(ctx, e, "'allowed_origins' entry %d is not an origin "
			    "like \"https://host:port\" or \"*\" (got '%.64s')", i + 1, v);
			continue;
		}
		if ((l->allowed_origins[l->norigins] = strdup(v)) != NULL)
			l->norigins++;
	}
}

/* protocol and the keys that only some protocols take */
static void
parse_listener_protocol(struct ctx *ctx, const config_setting_t *ls,
    struct fk_listener *l, const char *where)
{
	const config_setting_t *cs = config_setting_get_member(ls, "protocol");
	static const char *const ws_only[] = { "allowed_origins", "ping_interval", NULL };
	static const char *const head_only[] = { "max_header", "header_timeout", NULL };
	const char *const *k;
	bool web;

	/* metrics speaks HTTP only: that is its default */
	if (cs == NULL && l->service != NULL && l->service->line == NULL &&
	    l->service->http != NULL)
		l->protocol = PROTO_HTTP;
	l->codec = codec_for(l->protocol);
	if (l->codec == NULL) {
		cfg_error(ctx, cs != NULL ? cs : ls, "%s: protocol '%s' is not built into "
		    "this forkd", where, protocol_names[l->protocol]);
		return;
	}
	if (l->service != NULL && l->protocol == PROTO_HTTP && l->service->http == NULL)
		cfg_error(ctx, cs != NULL ? cs : ls, "%s: the %s service does not speak "
		    "http (use protocol \"line\", \"chunk\" or \"websocket\")", where,
		    l->service->name);
	if (l->service != NULL && l->protocol != PROTO_HTTP && l->service->line == NULL)
		cfg_error(ctx, cs != NULL ? cs : ls, "%s: the %s service speaks http only "
		    "(protocol = \"http\")", where, l->service->name);
	web = l->protocol == PROTO_WEBSOCKET || l->protocol == PROTO_HTTP;
	for (k = ws_only; *k != NULL; k++)
		if (l->protocol != PROTO_WEBSOCKET &&
		    (cs = config_setting_get_member(ls, *k)) != NULL)
			cfg_error(ctx, cs, "%s: '%s' applies to websocket listeners only "
			    "(this one speaks %s)", where, *k, protocol_names[l->protocol]);
	for (k = head_only; *k != NULL; k++)
		if (!web && (cs = config_setting_get_member(ls, *k)) != NULL)
			cfg_error(ctx, cs, "%s: '%s' applies to websocket and http listeners "
			    "only (this one speaks %s)", where, *k, protocol_names[l->protocol]);
	if ((cs = config_setting_get_member(ls, "allowed_origins")) != NULL &&
	    l->protocol == PROTO_WEBSOCKET)
		parse_origins(ctx, cs, l);
}

/* A listener's own settings for its service: { ...; echo = { prefix = ""; }; } */
static void
parse_listener_service_conf(struct ctx *ctx, struct fk_config *cfg,
    const config_setting_t *ls, struct fk_listener *l, const char *where)
{
	size_t i;

	for (i = 0; services[i] != NULL; i++) {
		const struct service *svc = services[i];
		const config_setting_t *cs;

		if (svc->settings == NULL ||
		    (cs = config_setting_get_member(ls, svc->name)) == NULL)
			continue;
		if (l->service != svc) {
			cfg_error(ctx, cs, "%s: '%s' settings apply to a %s listener only "
			    "(this one serves %s)", where, svc->name, svc->name,
			    l->service != NULL ? l->service->name : "nothing");
			continue;
		}
		if (config_setting_type(cs) != CONFIG_TYPE_GROUP) {
			cfg_error(ctx, cs, "'%s' must be a group: %s = { ... }; (got %s)",
			    svc->name, svc->name, type_name(config_setting_type(cs)));
			continue;
		}
		if (cfg->service_conf[i] == NULL)
			continue;	/* out of memory, said already */
		l->svc_conf = copy_settings(svc->settings, cfg->service_conf[i],
		    svc->conf_size);
		if (l->svc_conf == NULL) {
			cfg_error(ctx, cs, "out of memory");
			continue;
		}
		parse_group_over(ctx, cs, svc->name, svc->settings, l->svc_conf, NULL, true);
	}
}

static void
parse_listener(struct ctx *ctx, struct fk_config *cfg, const config_setting_t *ls,
    struct fk_listener *l)
{
	const config_setting_t *cs;
	const char *svc;
	char where[32];
	size_t i;

	l->line = (int)config_setting_source_line(ls);
	if (config_setting_type(ls) != CONFIG_TYPE_GROUP) {
		cfg_error(ctx, ls, "each listener must be a group like "
		    "{ address = \"0.0.0.0\"; port = 5002; service = \"echo\"; } (got %s)",
		    type_name(config_setting_type(ls)));
		return;
	}
	snprintf(where, sizeof(where), "listener %u", config_setting_index(ls) + 1);
	{
		const char *skip[FK_MAX_SERVICES + 2];
		size_t k = 0;

		skip[k++] = "allowed_origins";
		for (i = 0; services[i] != NULL && k < nitems(skip) - 1; i++)
			if (services[i]->settings != NULL)
				skip[k++] = services[i]->name;
		skip[k] = NULL;
		parse_group_over(ctx, ls, where, config_listener_settings, l, skip, false);
	}

	if (config_setting_get_member(ls, "address") == NULL)
		cfg_error(ctx, ls, "%s: 'address' is required (e.g. \"0.0.0.0\" or \"::\")", where);
	if (config_setting_get_member(ls, "port") == NULL)
		cfg_error(ctx, ls, "%s: 'port' is required", where);
	cs = config_setting_get_member(ls, "service");
	if (cs == NULL) {
		char names[128];

		service_names(names, sizeof(names));
		cfg_error(ctx, ls, "%s: 'service' is required (one of %s)", where, names);
	} else if ((svc = l->service_name) != NULL) {
		l->service = service_find(svc);
		if (l->service == NULL) {
			char names[128];
			const char *hint = NULL;
			size_t bestd = 2, d;

			service_names(names, sizeof(names));
			for (i = 0; services[i] != NULL; i++) {
				d = edit_distance(svc, services[i]->name, bestd);
				if (d <= bestd && (hint == NULL || d < bestd)) {
					hint = services[i]->name;
					bestd = d;
				}
			}
			if (hint != NULL)
				cfg_error(ctx, cs, "unknown service '%s' (did you mean '%s'? "
				    "known: %s)", svc, hint, names);
			else
				cfg_error(ctx, cs, "unknown service '%s' (known: %s)", svc, names);
		}
	}
	if (config_setting_get_member(ls, "idle_timeout") == NULL)
		l->idle_timeout = cfg->idle_timeout;
	parse_listener_protocol(ctx, ls, l, where);
	parse_listener_service_conf(ctx, cfg, ls, l, where);
	if (l->address != NULL && l->port > 0 &&
	    parse_address(l->address, l->port, &l->addr, &l->addrlen) != 0)
		cfg_error(ctx, config_setting_get_member(ls, "address"),
		    "'address' must be a numeric IPv4 or IPv6 address such as "
		    "\"0.0.0.0\", \"127.0.0.1\" or \"::\" (got '%s')", l->address);
}

/* Each served service's longest reply must fit in max_output. */
static void
check_replies_fit(struct ctx *ctx, const struct fk_config *cfg,
    const config_setting_t *root)
{
	const config_setting_t *cs = config_setting_get_member(root, "max_output");
	size_t i, j;

	if (cs == NULL)
		cs = config_setting_get_member(root, "listeners");
	for (i = 0; i < cfg->nlisteners; i++) {
		const struct service *svc = cfg->listeners[i].service;

		if (svc == NULL || svc->max_reply <= (size_t)cfg->max_output)
			continue;
		for (j = 0; j < i; j++)
			if (cfg->listeners[j].service == svc)
				break;
		if (j < i)
			continue;	/* said once per service */
		cfg_error(ctx, cs, "'max_output' must be at least %zu to hold the %s "
		    "service's longest reply (got max_output = %d)",
		    svc->max_reply, svc->name, cfg->max_output);
	}
}

static void
parse_listeners(struct ctx *ctx, struct fk_config *cfg, const config_setting_t *list)
{
	int i, j, n;

	if (config_setting_type(list) != CONFIG_TYPE_LIST) {
		cfg_error(ctx, list, "'listeners' must be a list: listeners = ( { ... }, { ... } ); "
		    "(got %s)", type_name(config_setting_type(list)));
		return;
	}
	n = config_setting_length(list);
	if (n == 0) {
		cfg_error(ctx, list, "'listeners' is empty: forkd needs at least one listener");
		return;
	}
	if (n > 256) {
		cfg_error(ctx, list, "too many listeners (%d; at most 256)", n);
		return;
	}
	cfg->listeners = calloc((size_t)n, sizeof(*cfg->listeners));
	if (cfg->listeners == NULL) {
		cfg_error(ctx, list, "out of memory");
		return;
	}
	cfg->nlisteners = (size_t)n;
	for (i = 0; i < n; i++)
		parse_listener(ctx, cfg, config_setting_get_elem(list, (unsigned)i),
		    &cfg->listeners[i]);

	for (i = 0; i < n; i++) {
		struct fk_listener *a = &cfg->listeners[i];

		if (a->addrlen == 0)
			continue;
		for (j = 0; j < i; j++) {
			struct fk_listener *b = &cfg->listeners[j];
			char at[64];

			if (b->addrlen == 0 || a->port != b->port ||
			    a->addr.ss_family != b->addr.ss_family)
				continue;
			sockaddr_text((struct sockaddr *)&a->addr, at, sizeof(at));
			if (addr_equal(&a->addr, &b->addr)) {
				cfg_error(ctx, config_setting_get_elem(list, (unsigned)i),
				    "duplicate listener %s (first defined at line %d)", at, b->line);
				break;
			}
			if (addr_is_any(&a->addr) || addr_is_any(&b->addr)) {
				char bt[64];

				sockaddr_text((struct sockaddr *)&b->addr, bt, sizeof(bt));
				cfg_error(ctx, config_setting_get_elem(list, (unsigned)i),
				    "listener %s overlaps listener %s at line %d "
				    "(a wildcard address already takes the port)", at, bt, b->line);
				break;
			}
		}
	}
}

static struct fk_config *
config_build(struct ctx *ctx, config_t *lc)
{
	const char *extra[FK_MAX_SERVICES + 2];
	const config_setting_t *root = config_root_setting(lc), *cs;
	struct fk_config *cfg;
	size_t i, nextra = 0;
	int n, k;

	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		return NULL;
	cfg->path = strdup(ctx->name);
	apply_defaults(config_global_settings, cfg);

	extra[nextra++] = "listeners";
	for (i = 0; services[i] != NULL && nextra < nitems(extra) - 1; i++)
		if (services[i]->settings != NULL)
			extra[nextra++] = services[i]->name;
	extra[nextra] = NULL;

	/* scalars first, so per-listener defaults see the global ones */
	n = config_setting_length(root);
	for (k = 0; k < n; k++) {
		const struct setting *s;
		const char *name;

		cs = config_setting_get_elem(root, (unsigned)k);
		name = config_setting_name(cs);
		if ((s = find_setting(config_global_settings, name)) != NULL) {
			parse_setting(ctx, s, cs, cfg);
			continue;
		}
		if (strcmp(name, "listeners") == 0)
			continue;
		if (service_find(name) != NULL && service_find(name)->settings != NULL)
			continue;
		if (service_find(name) != NULL)
			cfg_error(ctx, cs, "the %s service has no settings", name);
		else
			unknown_setting(ctx, cs, "", config_global_settings, extra);
	}

	for (i = 0; services[i] != NULL; i++) {
		const struct service *svc = services[i];

		if (svc->settings == NULL)
			continue;
		cfg->service_conf[i] = calloc(1, svc->conf_size);
		if (cfg->service_conf[i] == NULL) {
			cfg_error(ctx, NULL, "out of memory");
			continue;
		}
		cs = config_setting_get_member(root, svc->name);
		if (cs == NULL) {
			apply_defaults(svc->settings, cfg->service_conf[i]);
		} else if (config_setting_type(cs) != CONFIG_TYPE_GROUP) {
			apply_defaults(svc->settings, cfg->service_conf[i]);
			cfg_error(ctx, cs, "'%s' must be a group: %s = { ... }; (got %s)",
			    svc->name, svc->name, type_name(config_setting_type(cs)));
		} else {
			parse_group(ctx, cs, svc->name, svc->settings, cfg->service_conf[i]);
		}
		if (svc->check != NULL) {
			const char *key = NULL;
			char msg[300];

			if (svc->check(cfg->service_conf[i], &key, msg, sizeof(msg)) != 0)
				cfg_error(ctx, cs != NULL && key != NULL &&
				    config_setting_type(cs) == CONFIG_TYPE_GROUP &&
				    config_setting_get_member(cs, key) != NULL ?
				    config_setting_get_member(cs, key) : cs,
				    "'%s.%s' %s", svc->name, key != NULL ? key : "?", msg);
		}
	}

	cs = config_setting_get_member(root, "listeners");
	if (cs == NULL)
		cfg_error(ctx, NULL, "no 'listeners' defined: forkd needs at least one, e.g. "
		    "listeners = ( { address = \"0.0.0.0\"; port = 5002; service = \"echo\"; } );");
	else
		parse_listeners(ctx, cfg, cs);

	if ((long long)cfg->max_output < (long long)cfg->max_line + FK_OUTPUT_HEADROOM) {
		cs = config_setting_get_member(root, "max_output");
		if (cs == NULL)
			cs = config_setting_get_member(root, "max_line");
		cfg_error(ctx, cs, "'max_output' must be at least max_line + %d = %lld, "
		    "so that the reply to one full line fits (got max_output = %d, "
		    "max_line = %d)", FK_OUTPUT_HEADROOM,
		    (long long)cfg->max_line + FK_OUTPUT_HEADROOM, cfg->max_output,
		    cfg->max_line);
	}
	check_replies_fit(ctx, cfg, root);

	cfg->log_level = log_level_prios[cfg->log_level];
	if (cfg->workers == 0) {
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

		cfg->workers = ncpu < 1 ? 1 : ncpu > FK_MAX_WORKERS ? FK_MAX_WORKERS : (int)ncpu;
	}
	return cfg;
}

static struct fk_config *
load_text(const char *name, const char *text, const char *incdir,
    struct config_errors *errs)
{
	struct ctx ctx = { name, errs };
	struct fk_config *cfg = NULL;
	config_t lc;

	config_init(&lc);
	config_set_options(&lc, 0);	/* no silent int -> float conversion */
	if (incdir != NULL)
		config_set_include_dir(&lc, incdir);
	if (config_read_string(&lc, text) != CONFIG_TRUE) {
		const char *file = config_error_file(&lc);

		snprintf(errs->msg[errs->count++], sizeof(errs->msg[0]), "%s:%d: %s",
		    file != NULL ? file : name, config_error_line(&lc),
		    config_error_text(&lc));
	} else {
		cfg = config_build(&ctx, &lc);
		if (cfg == NULL && errs->count == 0)
			snprintf(errs->msg[errs->count++], sizeof(errs->msg[0]),
			    "%s: out of memory", name);
	}
	config_destroy(&lc);
	if (cfg != NULL && errs->count > 0) {
		config_free(cfg);
		cfg = NULL;
	}
	return cfg;
}

struct fk_config *
config_load_string(const char *name, const char *text, struct config_errors *errs)
{
	memset(errs, 0, sizeof(*errs));
	return load_text(name, text, NULL, errs);
}

struct fk_config *
config_load(const char *path, struct config_errors *errs)
{
	struct fk_config *cfg;
	struct stat st;
	char *text, *dir, *dircopy;
	ssize_t n;
	size_t got = 0;
	int fd;

	memset(errs, 0, sizeof(*errs));
#define FILE_ERROR(...) do { \
		snprintf(errs->msg[0], sizeof(errs->msg[0]), __VA_ARGS__); \
		errs->count = 1; \
	} while (0)

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		FILE_ERROR("%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0) {
		FILE_ERROR("%s: cannot stat: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	if (S_ISDIR(st.st_mode)) {
		FILE_ERROR("%s: is a directory, not a configuration file", path);
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode)) {
		FILE_ERROR("%s: not a regular file", path);
		close(fd);
		return NULL;
	}
	if (st.st_size > FK_MAX_CONFIG_BYTES) {
		FILE_ERROR("%s: too large (%lld bytes; a configuration file may have at most %d)",
		    path, (long long)st.st_size, FK_MAX_CONFIG_BYTES);
		close(fd);
		return NULL;
	}
	text = malloc((size_t)st.st_size + 1);
	if (text == NULL) {
		FILE_ERROR("%s: out of memory", path);
		close(fd);
		return NULL;
	}
	while (got < (size_t)st.st_size &&
	    (n = read(fd, text + got, (size_t)st.st_size - got)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			FILE_ERROR("%s: cannot read: %s", path, strerror(errno));
			free(text);
			close(fd);
			return NULL;
		}
		got += (size_t)n;
	}
	close(fd);
	text[got] = '\0';
	if (memchr(text, '\0', got) != NULL) {
		FILE_ERROR("%s: contains a NUL byte at offset %zu: not a text file", path,
		    (size_t)((char *)memchr(text, '\0', got) - text));
		free(text);
		return NULL;
	}
#undef FILE_ERROR
	dircopy = strdup(path);
	dir = dircopy != NULL ? dirname(dircopy) : NULL;
	cfg = load_text(path, text, dir, errs);
	free(dircopy);
	free(text);
	return cfg;
}

int
config_peek_string(const char *path, const char *key, char *buf, size_t len)
{
	const char *v = NULL;
	config_t lc;
	int rc = -1;

	config_init(&lc);
	if (config_read_file(&lc, path) == CONFIG_TRUE &&
	    config_lookup_string(&lc, key, &v) == CONFIG_TRUE && strlen(v) < len) {
		snprintf(buf, len, "%s", v);
		rc = 0;
	}
	config_destroy(&lc);
	return rc;
}

void
config_free(struct fk_config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->nlisteners; i++) {
		struct fk_listener *l = &cfg->listeners[i];
		size_t k;

		free_strings(config_listener_settings, l);
		for (k = 0; k < l->norigins; k++)
			free(l->allowed_origins[k]);
		free(l->allowed_origins);
		if (l->svc_conf != NULL && l->service != NULL)
			free_strings(l->service->settings, l->svc_conf);
		free(l->svc_conf);
	}
	free(cfg->listeners);
	for (i = 0; services[i] != NULL && i < FK_MAX_SERVICES; i++) {
		if (cfg->service_conf[i] != NULL)
			free_strings(services[i]->settings, cfg->service_conf[i]);
		free(cfg->service_conf[i]);
	}
	free_strings(config_global_settings, cfg);
	free(cfg->path);
	free(cfg);
}

const char *
config_log_level_name(int level)
{
	size_t i;

	for (i = 0; i < nitems(log_level_prios); i++)
		if (log_level_prios[i] == level)
			return log_level_names[i];
	return "info";
}
