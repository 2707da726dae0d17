/*
 * The calc service: one arithmetic request per line, one reply per line.
 * All the work is in calc.c, which knows nothing of sessions so that it can
 * be tested and fuzzed on its own.  No settings, no per-session state.
 */
#include <stddef.h>

#include "calc.h"
#include "service.h"

static void
calc_line(struct session *s, char *line, size_t len)
{
	char	 buf[CALC_MIN_OUT];

	calc_eval(line, len, buf, sizeof(buf));
	session_reply(s, "%s", buf);
}

const struct service service_calc = {
	.name = "calc",
	.line = calc_line,
};
