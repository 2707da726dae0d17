/*
 * The calculator behind the calc service: one request line in, one reply
 * line out.  Pure code: no allocation, no global state, safe to call from
 * any number of threads at once.
 */
#ifndef FORKD_CALC_H
#define FORKD_CALC_H

#include <stddef.h>

#define CALC_MIN_OUT		128	/* every reply fits in this many bytes */

/* Evaluate one request line; writes the reply (no line ending) into out.
 * Returns 0 for a result, -1 when out holds an "ERR ..." line. */
int		 calc_eval(const char *line, size_t len, char *out, size_t outsz);

#endif
