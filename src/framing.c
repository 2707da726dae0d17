#include <stdlib.h>
#include <string.h>

#include "framing.h"

#define FRAMER_MIN_CAP		128
#define FRAMER_KEEP_CAP		1024	/* buffers above this are freed when empty */

void
framer_init(struct framer *f, size_t max_line)
{
	memset(f, 0, sizeof(*f));
	f->max = max_line;
}

void
framer_reset(struct framer *f)
{
	free(f->buf);
	f->buf = NULL;
	f->len = f->cap = 0;
	f->discarding = false;
}

size_t
framer_pending(const struct framer *f)
{
	return f->len;
}

static int
deliver(char *line, size_t len, frame_fn fn, void *arg, size_t max)
{
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len > max)
		return fn(arg, NULL, len);
	line[len] = '\0';
	return fn(arg, line, len);
}

/* Append to the partial-line buffer; false when the line became too long. */
static bool
keep(struct framer *f, const char *data, size_t n)
{
	/* one byte of slack for a '\r' before the '\n', one for the NUL */
	if (f->len + n > f->max + 1)
		return false;
	if (f->len + n + 1 > f->cap) {
		size_t cap = f->cap ? f->cap : FRAMER_MIN_CAP;
		char *nb;

		while (cap < f->len + n + 1)
			cap *= 2;
		if (cap > f->max + 2)
			cap = f->max + 2;
		nb = realloc(f->buf, cap);
		if (nb == NULL)
			return false;
		f->buf = nb;
		f->cap = cap;
	}
	memcpy(f->buf + f->len, data, n);
	f->len += n;
	return true;
}

static void
drop_partial(struct framer *f)
{
	f->len = 0;
	if (f->cap > FRAMER_KEEP_CAP) {
		free(f->buf);
		f->buf = NULL;
		f->cap = 0;
	}
}

int
framer_feed(struct framer *f, char *data, size_t n, frame_fn fn, void *arg)
{
	const char *start = data;

	while (n > 0) {
		char *nl = memchr(data, '\n', n);
		size_t take = nl != NULL ? (size_t)(nl - data) : n;
		int r = 0;

		if (f->discarding) {
			if (nl == NULL)
				return 0;
			f->discarding = false;
		} else if (nl == NULL) {
			if (!keep(f, data, n)) {
				drop_partial(f);
				f->discarding = true;
				f->used = (size_t)(data + n - start);
				return fn(arg, NULL, f->max + 1);
			}
			return 0;
		} else if (f->len > 0) {
			if (!keep(f, data, take)) {
				drop_partial(f);
				r = fn(arg, NULL, f->max + 1);
			} else {
				r = deliver(f->buf, f->len, fn, arg, f->max);
				drop_partial(f);
			}
		} else {
			r = deliver(data, take, fn, arg, f->max);
		}
		data += take + 1;
		n -= take + 1;
		if (r < 0) {
			f->used = (size_t)(data - start);
			return -1;
		}
	}
	return 0;
}

int
framer_flush(struct framer *f, frame_fn fn, void *arg)
{
	int r = 0;

	if (f->discarding) {
		f->discarding = false;
		return 0;
	}
	if (f->len > 0) {
		r = deliver(f->buf, f->len, fn, arg, f->max);
		drop_partial(f);
	}
	return r;
}
