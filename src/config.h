/*
 * Configuration: a libconfig file parsed into a fresh, immutable struct.
 * A reload builds a second one beside the running one and swaps only when it
 * is complete and valid.
 */
#ifndef FORKD_CONFIG_H
#define FORKD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define FK_MAX_WORKERS		64	/* configurable workers */
#define FK_MAX_SLOTS		(2 * FK_MAX_WORKERS)	/* two generations during a reload */
#define FK_MAX_SERVICES		16
#define FK_MAX_PROTOCOLS	8	/* room for enum fk_protocol (codec.h) */
#define FK_MAX_KILLS		12	/* room for enum conn_kill (conn.h) */
#define FK_MAX_CONFIG_BYTES	(1024 * 1024)
#define FK_MAX_ERRORS		32
/*
 * max_output must hold one full-length line's reply with room to spare:
 * the longest prefix a service puts before the line (echo.prefix, up to 256
 * bytes; a chat "[nick] ", up to 35) and its CRLF.  With less, a client
 * that reads at full speed is still dropped as too slow by one long line.
 */
#define FK_OUTPUT_HEADROOM	1024

enum setting_type { SET_INT, SET_STRING, SET_BOOL, SET_ENUM };

/* One key of the config file: the table drives parsing, defaults and checks. */
struct setting {
	const char	 *name;
	enum setting_type type;
	size_t		  offset;	/* into the struct the table fills */
	long long	  min, max;	/* SET_INT range; SET_STRING max length */
	long long	  def;		/* SET_INT / SET_BOOL / SET_ENUM default */
	const char	 *def_str;	/* SET_STRING default (NULL = unset) */
	const char *const *names;	/* SET_ENUM names, NULL-terminated */
};

struct service;
struct codec;

struct fk_listener {
	char		*address;
	int		 port;
	char		*service_name;
	const struct service *service;
	int		 idle_timeout;	/* seconds; the global one unless overridden */
	char		*banner;	/* NULL = none */
	int		 protocol;	/* enum fk_protocol (codec.h) */
	const struct codec *codec;
	/* websocket: Origins a browser may connect from; none set = the
	 * request's own Host only (requests without Origin are let in) */
	char		**allowed_origins;
	size_t		 norigins;
	int		 ping_interval;	/* websocket: seconds; 0 = never ping */
	int		 max_header;	/* websocket/http: bytes of a request head */
	int		 header_timeout; /* websocket/http: seconds to send a head */
	/* this listener's own settings group for its service (a copy of the
	 * global one with the listener's keys applied); NULL = the global */
	void		*svc_conf;
	struct sockaddr_storage addr;
	socklen_t	 addrlen;
	int		 line;		/* where it was defined */
	int		 metrics_id;	/* its counters in the scoreboard (master) */
};

struct fk_config {
	char		*path;
	int		 workers;	/* resolved: 0 was turned into the CPU count */
	int		 threads;
	int		 max_connections;
	int		 max_connections_per_ip;
	int		 backlog;
	int		 idle_timeout;
	int		 send_timeout;
	int		 max_line;
	int		 max_output;
	int		 shutdown_timeout;
	int		 max_requests_per_worker;
	int		 worker_timeout;
	char		*user;
	char		*group;
	bool		 allow_root;
	int		 log_level;	/* syslog priority: LOG_ERR .. LOG_DEBUG */
	char		*control_socket;

	struct fk_listener *listeners;
	size_t		 nlisteners;

	/* per service (indexed like services[]): its settings struct */
	void		*service_conf[FK_MAX_SERVICES];
};

/* Error list filled by config_load: "FILE:LINE: message" each. */
struct config_errors {
	char		 msg[FK_MAX_ERRORS][512];
	int		 count;
	int		 dropped;
};

/* The tables behind the file's top-level and per-listener keys,
 * NULL-terminated (each service's own table is its .settings). */
extern const struct setting config_global_settings[];
extern const struct setting config_listener_settings[];

/* Parse and validate; NULL and errs filled on failure. */
struct fk_config *config_load(const char *path, struct config_errors *errs);
/* Parse and validate text (for tests and fuzzing); name is used in messages. */
struct fk_config *config_load_string(const char *name, const char *text,
		    struct config_errors *errs);
void		  config_free(struct fk_config *);
/* One string setting of a file that may not validate; -1 when unreadable. */
int		  config_peek_string(const char *path, const char *key, char *buf,
		    size_t len);
const char	 *config_log_level_name(int level);

#endif
