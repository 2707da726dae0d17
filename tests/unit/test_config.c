/* Configuration: defaults, every kind of mistake reported as FILE:LINE. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <libconfig.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "check.h"
#include "codec.h"
#include "config.h"
#include "service.h"

#define L_ECHO "listeners = ( { address = \"127.0.0.1\"; port = 5002; service = \"echo\"; } );\n"

/* Load text; expect failure with `want` in one of the messages. */
static void
expect_error(const char *text, const char *want)
{
	struct config_errors errs;
	struct fk_config *cfg = config_load_string("t.conf", text, &errs);
	int i, found = 0;

	CHECK(cfg == NULL, "expected an error containing \"%s\"", want);
	config_free(cfg);
	for (i = 0; i < errs.count; i++)
		if (strstr(errs.msg[i], want) != NULL)
			found = 1;
	CHECK(found, "no message contains \"%s\" (first: \"%s\")", want,
	    errs.count ? errs.msg[0] : "(none)");
}

static struct fk_config *
expect_ok(const char *text)
{
	struct config_errors errs;
	struct fk_config *cfg = config_load_string("t.conf", text, &errs);

	CHECK(cfg != NULL, "expected OK, got \"%s\"", errs.count ? errs.msg[0] : "?");
	return cfg;
}

static void
write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, data, len) != (ssize_t)len)
		abort();
	close(fd);
}

static void
expect_file_error(const char *path, const char *want)
{
	struct config_errors errs;
	struct fk_config *cfg = config_load(path, &errs);

	CHECK(cfg == NULL && errs.count == 1 && strstr(errs.msg[0], want) != NULL &&
	    strncmp(errs.msg[0], path, strlen(path)) == 0,
	    "%s: wanted \"%s\", got \"%s\"", path, want, errs.count ? errs.msg[0] : "(ok)");
	config_free(cfg);
}

/* Does a listener line of the text (one naming an address, commented out
 * or not) set the key? */
static bool
listener_shows(const char *text, const char *name)
{
	const char *line, *end, *p;
	size_t n = strlen(name);

	for (line = text; *line != '\0'; line = *end ? end + 1 : end) {
		end = strchr(line, '\n');
		if (end == NULL)
			end = line + strlen(line);
		if (memmem(line, (size_t)(end - line), "address =", 9) == NULL)
			continue;
		for (p = line; (p = memmem(p, (size_t)(end - p), name, n)) != NULL; p++)
			if ((p[-1] == ' ' || p[-1] == '{') && strncmp(p + n, " =", 2) == 0)
				return true;
	}
	return false;
}

/* The value a table entry has in base, as text, to compare two structs. */
static void
value_text(const struct setting *s, const void *base, char *buf, size_t len)
{
	const char *p = (const char *)base + s->offset;

	switch (s->type) {
	case SET_INT:
	case SET_ENUM:
		snprintf(buf, len, "%d", *(const int *)(const void *)p);
		break;
	case SET_BOOL:
		snprintf(buf, len, "%d", *(const bool *)(const void *)p);
		break;
	case SET_STRING:
		snprintf(buf, len, "%s", *(char *const *)(const void *)p ?
		    *(char *const *)(const void *)p : "(unset)");
		break;
	}
}

/*
 * etc/forkd.conf, the file users start from, shows every key forkd knows
 * (top level, per listener, every service group) with its default, and
 * ships the four documented listeners.
 */
static void
check_shipped_file(void)
{
	const char *srcdir = getenv("FORKD_SRCDIR");
	char path[512], a[600], b[600], *text;
	struct config_errors errs;
	struct fk_config *cfg, *def;
	const struct setting *s;
	config_t lc;
	size_t i;
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/etc/forkd.conf", srcdir ? srcdir : "../..");
	f = fopen(path, "r");
	CHECK(f != NULL, "cannot read %s (set FORKD_SRCDIR)", path);
	if (f == NULL)
		return;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	text = calloc(1, (size_t)n + 1);
	if (text == NULL || fread(text, 1, (size_t)n, f) != (size_t)n)
		abort();
	fclose(f);

	cfg = config_load(path, &errs);
	CHECK(cfg != NULL, "%s does not load: %s", path, errs.count ? errs.msg[0] : "?");
	def = config_load_string("defaults", L_ECHO, &errs);
	config_init(&lc);
	CHECK(config_read_file(&lc, path) == CONFIG_TRUE, "libconfig reads %s", path);
	if (cfg == NULL || def == NULL)
		goto out;

	/* every top-level key is set in the file, to its default */
	for (s = config_global_settings; s->name != NULL; s++) {
		CHECK(config_lookup(&lc, s->name) != NULL, "%s: no '%s'", path, s->name);
		value_text(s, cfg, a, sizeof(a));
		value_text(s, def, b, sizeof(b));
		CHECK(strcmp(a, b) == 0, "%s: '%s' is %s, its default is %s", path,
		    s->name, a, b);
	}
	/* every listener key is shown, in a listener or a commented example */
	for (s = config_listener_settings; s->name != NULL; s++)
		CHECK(listener_shows(text, s->name), "%s: listener key '%s' not shown", path,
		    s->name);
	/* every service group, each of its keys set to its default */
	for (i = 0; services[i] != NULL; i++) {
		const void *cv = cfg->service_conf[i], *dv = def->service_conf[i];

		if (services[i]->settings == NULL)
			continue;
		CHECK(config_lookup(&lc, services[i]->name) != NULL, "%s: no %s group",
		    path, services[i]->name);
		for (s = services[i]->settings; s->name != NULL; s++) {
			char key[128];

			snprintf(key, sizeof(key), "%s.%s", services[i]->name, s->name);
			CHECK(config_lookup(&lc, key) != NULL, "%s: no '%s'", path, key);
			value_text(s, cv, a, sizeof(a));
			value_text(s, dv, b, sizeof(b));
			CHECK(strcmp(a, b) == 0, "%s: '%s' is %s, its default is %s", path,
			    key, a, b);
		}
	}
	/* the documented listeners: echo, stats on loopback only, calc, chat,
	 * chat for browsers and WebSocket clients on 8000, metrics on loopback
	 * only */
	CHECK(cfg->nlisteners == 6, "%s: %zu listeners", path, cfg->nlisteners);
	if (cfg->nlisteners == 6) {
		static const struct { const char *svc, *addr; int port; } want[] = {
			{ "echo", "0.0.0.0", 5002 }, { "stats", "127.0.0.1", 5003 },
			{ "calc", "0.0.0.0", 5004 }, { "chat", "0.0.0.0", 5005 },
			{ "chat", "0.0.0.0", 8000 }, { "metrics", "127.0.0.1", 9477 },
		};

		CHECK(cfg->listeners[4].protocol == PROTO_WEBSOCKET,
		    "%s: the chat on 8000 does not speak WebSocket", path);
		for (i = 0; i < 6; i++) {
			const struct fk_listener *l = &cfg->listeners[i];

			CHECK(strcmp(l->service_name, want[i].svc) == 0 &&
			    strcmp(l->address, want[i].addr) == 0 && l->port == want[i].port,
			    "%s: listener %zu is %s %s:%d, not %s %s:%d", path, i + 1,
			    l->service_name, l->address, l->port, want[i].svc, want[i].addr,
			    want[i].port);
			CHECK(l->banner == NULL && l->idle_timeout == cfg->idle_timeout,
			    "%s: listener %zu overrides a default", path, i + 1);
		}
	}
out:
	config_destroy(&lc);
	config_free(cfg);
	config_free(def);
	free(text);
}

#define L1(body) "listeners = ( { address = \"127.0.0.1\"; port = 5002; " body " } );\n"

/* protocol, its keys, and a listener's own service settings */
static void
check_protocols(void)
{
	struct fk_config *cfg;

	cfg = expect_ok(L_ECHO);
	if (cfg != NULL)
		CHECK(cfg->listeners[0].protocol == PROTO_LINE &&
		    cfg->listeners[0].codec == &codec_line &&
		    cfg->listeners[0].svc_conf == NULL, "line is the default");
	config_free(cfg);
	cfg = expect_ok(L1("service = \"calc\"; protocol = \"chunk\";"));
	if (cfg != NULL)
		CHECK(cfg->listeners[0].codec == &codec_chunk, "chunk");
	config_free(cfg);
	expect_error("\n" L1("service = \"echo\"; protocol = \"lines\";"),
	    "t.conf:2: 'protocol' must be one of line, chunk, websocket, http (got 'lines')");
	expect_error("\n" L1("service = \"echo\"; protocl = \"line\";"),
	    "t.conf:2: unknown setting 'protocl' in listener 1 (did you mean 'protocol'?)");
	expect_error("\n" L1("service = \"echo\"; ping_interval = 5;"),
	    "t.conf:2: listener 1: 'ping_interval' applies to websocket listeners only "
	    "(this one speaks line)");
	expect_error("\n" L1("service = \"echo\"; protocol = \"chunk\"; max_header = 4096;"),
	    "t.conf:2: listener 1: 'max_header' applies to websocket and http listeners "
	    "only (this one speaks chunk)");
	expect_error("\n" L1("service = \"echo\"; allowed_origins = [ \"https://a\" ];"),
	    "t.conf:2: listener 1: 'allowed_origins' applies to websocket listeners only");
	expect_error("\n" L1("service = \"echo\"; protocol = \"http\";"),
	    codec_for(PROTO_HTTP) != NULL ? "t.conf:2: listener 1: the echo service "
	    "does not speak http" : "t.conf:2: listener 1: protocol 'http' is not built");

	/* a listener's own settings: a copy of the global group, overridden */
	cfg = expect_ok("echo = { prefix = \"E: \"; };\n"
	    "listeners = ( { address = \"127.0.0.1\"; port = 5002; service = \"echo\"; },\n"
	    "  { address = \"127.0.0.1\"; port = 5008; service = \"echo\"; "
	    "echo = { prefix = \"\"; }; } );\n");
	if (cfg != NULL) {
		int ei = service_index(service_find("echo"));

		CHECK(cfg->listeners[0].svc_conf == NULL, "no override on the first");
		CHECK(cfg->listeners[1].svc_conf != NULL &&
		    strcmp(*(char **)cfg->listeners[1].svc_conf, "") == 0,
		    "the second echoes plainly");
		CHECK(strcmp(*(char **)cfg->service_conf[ei], "E: ") == 0,
		    "the global prefix stays");
	}
	config_free(cfg);
	cfg = expect_ok("chat = { max_rooms = 7; };\n"
	    L1("service = \"chat\"; chat = { default_room = \"hall\"; };"));
	config_free(cfg);
	expect_error("\n" L1("service = \"echo\"; chat = { default_room = \"x\"; };"),
	    "t.conf:2: listener 1: 'chat' settings apply to a chat listener only "
	    "(this one serves echo)");
	expect_error("\n" L1("service = \"echo\"; echo = { prefx = \"x\"; };"),
	    "t.conf:2: unknown setting 'prefx' in echo (did you mean 'prefix'?)");
	expect_error("\n" L1("service = \"echo\"; echo = 3;"),
	    "t.conf:2: 'echo' must be a group");
	expect_error("\n" L1("service = \"echo\"; echo = { prefix = 3; };"),
	    "t.conf:2: 'echo.prefix' must be a string (got an integer)");
}

int
main(void)
{
	struct fk_config *cfg;
	char dir[] = "/tmp/forkd-test-XXXXXX", path[256];
	char *big;

	/* defaults */
	cfg = expect_ok(L_ECHO);
	if (cfg != NULL) {
		CHECK(cfg->workers == 4, "workers %d", cfg->workers);
		CHECK(cfg->threads == 8, "threads %d", cfg->threads);
		CHECK(cfg->max_connections == 10000, "max_connections");
		CHECK(cfg->max_connections_per_ip == 0, "max_connections_per_ip");
		CHECK(cfg->backlog == 511, "backlog");
		CHECK(cfg->idle_timeout == 300, "idle_timeout");
		CHECK(cfg->max_line == 8192, "max_line");
		CHECK(cfg->shutdown_timeout == 10, "shutdown_timeout");
		CHECK(strcmp(cfg->user, "forkd") == 0, "user");
		CHECK(strcmp(cfg->group, "forkd") == 0, "group");
		CHECK(cfg->log_level == LOG_INFO, "log_level");
		CHECK(cfg->nlisteners == 1 && cfg->listeners[0].port == 5002, "listener");
		CHECK(cfg->listeners[0].service == service_find("echo"), "service");
		CHECK(cfg->listeners[0].idle_timeout == 300, "listener idle_timeout inherits");
		CHECK(strcmp(*(char **)cfg->service_conf[service_index(service_find("echo"))],
		    "Echo: ") == 0, "echo.prefix default");
		config_free(cfg);
	}

	/* values, overrides, workers = 0, IPv6 */
	cfg = expect_ok("workers = 0; threads = 2; log_level = \"debug\"; idle_timeout = 60;\n"
	    "listeners = ( { address = \"::\"; port = 6000; service = \"calc\"; idle_timeout = 5; "
	    "banner = \"hi\"; },\n { address = \"0.0.0.0\"; port = 6000; service = \"echo\"; } );\n"
	    "echo = { prefix = \"\"; };\n");
	if (cfg != NULL) {
		CHECK(cfg->workers >= 1, "workers = 0 means one per CPU (%d)", cfg->workers);
		CHECK(cfg->log_level == LOG_DEBUG, "log_level debug");
		CHECK(cfg->listeners[0].idle_timeout == 5, "per-listener idle_timeout");
		CHECK(cfg->listeners[1].idle_timeout == 60, "global idle_timeout");
		CHECK(strcmp(cfg->listeners[0].banner, "hi") == 0, "banner");
		CHECK(cfg->listeners[0].addr.ss_family == AF_INET6, "IPv6 listener");
		config_free(cfg);
	}

	/* every kind of mistake, with its line */
	expect_error("workers = 4;\nwrokers = 3;\n" L_ECHO,
	    "t.conf:2: unknown setting 'wrokers' (did you mean 'workers'?)");
	expect_error("zzz = 1;\n" L_ECHO, "t.conf:1: unknown setting 'zzz'");
	expect_error("workers = \"four\";\n" L_ECHO,
	    "t.conf:1: 'workers' must be an integer (got a string)");
	expect_error("workers = 1.5;\n" L_ECHO, "'workers' must be an integer (got a decimal number)");
	expect_error("\n\nworkers = 65;\n" L_ECHO,
	    "t.conf:3: 'workers' must be between 0 and 64 (got 65)");
	expect_error("threads = 0;\n" L_ECHO, "'threads' must be between 1 and 1024 (got 0)");
	expect_error("max_line = 10000000000;\n" L_ECHO, "'max_line' must be between");
	expect_error("allow_root = 1;\n" L_ECHO, "'allow_root' must be true or false");
	expect_error("log_level = \"loud\";\n" L_ECHO,
	    "'log_level' must be one of error, warning, info, debug (got 'loud')");
	expect_error("workers = 2;\nthreads = = 3;\n" L_ECHO, "t.conf:2: syntax error");
	expect_error("workers = 2;\n", "t.conf: no 'listeners' defined");
	expect_error("listeners = ();\n", "t.conf:1: 'listeners' is empty");
	expect_error("listeners = 5;\n", "'listeners' must be a list");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 1; service = \"ecco\"; } );\n",
	    "t.conf:2: unknown service 'ecco' (did you mean 'echo'?");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 1; service = \"http\"; } );\n",
	    "unknown service 'http' (known: echo, calc, chat, stats, metrics)");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 1; } );\n",
	    "'service' is required");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; service = \"echo\"; } );\n",
	    "'port' is required");
	expect_error("listeners = (\n { port = 5; service = \"echo\"; } );\n",
	    "'address' is required");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 70000; service = \"echo\"; } );\n",
	    "t.conf:2: 'port' must be between 1 and 65535 (got 70000)");
	expect_error("listeners = (\n { address = \"localhost\"; port = 7; service = \"echo\"; } );\n",
	    "'address' must be a numeric IPv4 or IPv6 address");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 7; service = \"echo\"; prot = 1; } );\n",
	    "t.conf:2: unknown setting 'prot' in listener 1 (did you mean 'port'?)");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 7; service = \"echo\"; },\n"
	    " { address = \"127.0.0.1\"; port = 7; service = \"calc\"; } );\n",
	    "t.conf:3: duplicate listener 127.0.0.1:7 (first defined at line 2)");
	expect_error("listeners = (\n { address = \"0.0.0.0\"; port = 7; service = \"echo\"; },\n"
	    " { address = \"127.0.0.1\"; port = 7; service = \"calc\"; } );\n",
	    "overlaps listener 0.0.0.0:7");
	expect_error(L_ECHO "echo = { prefx = \"a\"; };\n",
	    "t.conf:2: unknown setting 'prefx' in echo (did you mean 'prefix'?)");
	expect_error(L_ECHO "echo = 3;\n", "'echo' must be a group");
	expect_error(L_ECHO "calc = { a = 1; };\n", "the calc service has no settings");
	expect_error(L_ECHO "chat = { max_rooms = 0; };\n", "'chat.max_rooms' must be between 1");
	expect_error("listeners = (\n { address = \"127.0.0.1\"; port = 7; service = \"echo\"; "
	    "banner = \"a\\nb\"; } );\n", "'banner' must not contain a line break");
	/* max_output must hold the reply to one full line and some prefix */
	expect_error("max_line = 8192;\nmax_output = 4096;\n" L_ECHO,
	    "t.conf:2: 'max_output' must be at least max_line + 1024 = 9216");
	expect_error("\nmax_line = 300000;\n" L_ECHO,
	    "t.conf:2: 'max_output' must be at least max_line + 1024 = 301024, "
	    "so that the reply to one full line fits (got max_output = 262144");
	expect_error("max_output = 9215;\n" L_ECHO, "t.conf:1: 'max_output' must be at least");
	cfg = expect_ok("max_output = 9216;\n" L_ECHO);
	config_free(cfg);
	cfg = expect_ok("max_line = 3072;\nmax_output = 4096;\n" L_ECHO);
	config_free(cfg);
	/* ... and the longest reply of every service that is served: stats
	 * lists every worker slot (2048 + 128 slots x 384 bytes) */
#define L_STATS "listeners = ( { address = \"127.0.0.1\"; port = 5003; service = \"stats\"; },\n" \
	"  { address = \"127.0.0.1\"; port = 5004; service = \"stats\"; } );\n"
	expect_error("max_output = 53247;\n" L_STATS,
	    "t.conf:1: 'max_output' must be at least 53248 to hold the stats service's "
	    "longest reply (got max_output = 53247)");
	cfg = expect_ok("max_output = 53248;\n" L_STATS);
	config_free(cfg);

	check_shipped_file();
	check_protocols();

	/* several mistakes: all of them reported */
	{
		struct config_errors errs;

		cfg = config_load_string("t.conf", "wrokers = 1;\nthreads = 0;\n", &errs);
		CHECK(cfg == NULL && errs.count == 3, "three errors reported (%d)", errs.count);
	}

	/* files that are not configuration files */
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(path, sizeof(path), "%s/missing.conf", dir);
	expect_file_error(path, "cannot open: No such file or directory");
	expect_file_error(dir, "is a directory");
	snprintf(path, sizeof(path), "%s/empty.conf", dir);
	write_file(path, "", 0);
	expect_file_error(path, "no 'listeners' defined");
	snprintf(path, sizeof(path), "%s/binary.conf", dir);
	write_file(path, "\x7f" "ELF\x02\x01\x00\x00garbage", 16);
	expect_file_error(path, "contains a NUL byte at offset 6");
	snprintf(path, sizeof(path), "%s/junk.conf", dir);
	write_file(path, "\xff\xfe\x01\x02 }}}{{{", 10);
	expect_file_error(path, "junk.conf:1:");
	snprintf(path, sizeof(path), "%s/huge.conf", dir);
	big = malloc(FK_MAX_CONFIG_BYTES + 2);
	memset(big, '#', FK_MAX_CONFIG_BYTES + 1);
	write_file(path, big, FK_MAX_CONFIG_BYTES + 1);
	free(big);
	expect_file_error(path, "too large (1048577 bytes");
	if (geteuid() != 0) {
		snprintf(path, sizeof(path), "%s/secret.conf", dir);
		write_file(path, L_ECHO, strlen(L_ECHO));
		chmod(path, 0);
		expect_file_error(path, "cannot open: Permission denied");
	}
	/* a good file, with an @include relative to its directory */
	snprintf(path, sizeof(path), "%s/part.inc", dir);
	write_file(path, "threads = 3;\n", 13);
	snprintf(path, sizeof(path), "%s/good.conf", dir);
	write_file(path, "@include \"part.inc\"\n" L_ECHO, strlen("@include \"part.inc\"\n" L_ECHO));
	{
		struct config_errors errs;

		cfg = config_load(path, &errs);
		CHECK(cfg != NULL && cfg->threads == 3, "include read (%s)",
		    errs.count ? errs.msg[0] : "");
		config_free(cfg);
	}
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	if (system(path) != 0)
		return 1;
	return check_done();
}
