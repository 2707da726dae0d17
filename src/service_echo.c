/*
 * echo: "hello" -> "Echo: hello"; the bytes of the line pass through
 * unchanged.  Over WebSocket, a binary message comes back as one binary
 * message (with the prefix, like text).
 */
#include <stddef.h>
#include <string.h>

#include "config.h"
#include "service.h"

struct echo_conf {
	char	*prefix;
};

static const struct setting echo_settings[] = {
	{ "prefix", SET_STRING, offsetof(struct echo_conf, prefix), 0, 256, 0, "Echo: ", NULL },
	{ NULL, 0, 0, 0, 0, 0, NULL, NULL }
};

static void
echo_line(struct session *s, char *line, size_t len)
{
	const struct echo_conf *conf = session_conf(s);
	size_t plen = strlen(conf->prefix);

	/* restore the terminator in place so the reply is one append */
	line[len] = '\r';
	if (plen > 0)
		session_send(s, conf->prefix, plen);
	session_send(s, line, len + 1);
	session_send(s, "\n", 1);
}

const struct service service_echo = {
	.name = "echo",
	.settings = echo_settings,
	.conf_size = sizeof(struct echo_conf),
	.line = echo_line,
	.binary = true,		/* a binary WebSocket message comes back binary */
};
