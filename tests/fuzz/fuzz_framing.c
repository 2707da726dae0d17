/*
 * libFuzzer harness for the line framer (framing.c).
 *
 * Input layout:
 *   byte 0-1  max_line: 1 + byte0 (1..256), or when byte1 has its top bit
 *             set, 1 + (byte0 | (byte1 & 0x7f) << 8) (1..32768)
 *   byte 2    largest chunk (1..256)
 *   byte 3    seed for the chunk sizes
 *   byte 4    stop after this many callbacks (0: never), to exercise a
 *             callback that returns -1
 *   rest      the byte stream a client sends
 *
 * The stream is fed in chunks of input-chosen sizes, each in an exact-size
 * heap copy (so ASan sees any read or write past a chunk), and every
 * callback is compared with a simple reference splitter run on the whole
 * stream: each terminated line is either delivered byte for byte (one
 * trailing '\r' stripped) or, when longer than max_line, reported once as
 * too long; the unterminated tail is either held (framer_pending() == its
 * length) or reported too long once it passes max_line + 1 bytes.  Then the
 * framer is reset and the whole stream is fed again in one piece, which must
 * give the same lines.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* what the reference splitter expects: one per terminated line */
struct expect {
	size_t	 off;		/* line start in the stream */
	size_t	 len;		/* without its terminator */
	bool	 too_long;
};

struct run {
	const char	*stream;
	size_t		 size;
	size_t		 max;
	struct expect	*exp;
	size_t		 nexp;
	size_t		 tail_off;	/* unterminated tail */
	size_t		 tail_len;
	size_t		 next;		/* next expected callback */
	size_t		 calls;
	size_t		 stop_after;	/* 0: never */
	bool		 tail_reported;	/* the tail was reported too long */
	struct framer	*f;
};

static size_t
reference(const char *s, size_t n, size_t max, struct expect *exp, size_t *tail_off)
{
	size_t i, start = 0, k = 0;

	for (i = 0; i < n; i++) {
		if (s[i] != '\n')
			continue;
		exp[k].off = start;
		exp[k].len = i - start;
		if (exp[k].len > 0 && s[i - 1] == '\r')
			exp[k].len--;
		exp[k].too_long = exp[k].len > max;
		k++;
		start = i + 1;
	}
	*tail_off = start;
	return k;
}

static void
check_framer(const struct run *r)
{
	const struct framer *f = r->f;

	if (framer_pending(f) > r->max + 1)
		abort();
	if (f->len > f->cap)
		abort();
	if (f->buf == NULL && f->cap != 0)
		abort();
	/* the buffer never grows past the longest line it may hold, plus a
	 * byte for a '\r' and one for the NUL */
	if (f->cap > r->max + 2)
		abort();
}

static int
on_line(void *arg, char *line, size_t len)
{
	struct run *r = arg;

	r->calls++;
	check_framer(r);
	if (line == NULL) {
		if (len <= r->max)
			abort();
		if (r->next < r->nexp) {
			if (!r->exp[r->next].too_long)
				abort();
			r->next++;
		} else {
			/* only the unterminated tail may be reported early */
			if (r->tail_reported || r->tail_len <= r->max + 1)
				abort();
			r->tail_reported = true;
		}
	} else {
		const struct expect *e;

		if (len > r->max || line[len] != '\0')
			abort();
		if (memchr(line, '\n', len) != NULL)
			abort();
		if (r->next >= r->nexp)
			abort();	/* a line the stream does not end */
		e = &r->exp[r->next++];
		if (e->too_long || e->len != len)
			abort();
		if (memcmp(r->stream + e->off, line, len) != 0)
			abort();
	}
	if (r->stop_after != 0 && r->calls >= r->stop_after)
		return -1;
	return 0;
}

/* Feed r->stream in chunks from sizes[]; the callback checks every line. */
static void
feed(struct run *r, const size_t *sizes, size_t nsizes)
{
	size_t pos = 0, k = 0;
	bool stopped = false;

	while (pos < r->size) {
		size_t n = sizes[k++ % nsizes];
		char *chunk;
		int rc;

		if (n > r->size - pos)
			n = r->size - pos;
		if ((chunk = malloc(n)) == NULL)
			abort();
		memcpy(chunk, r->stream + pos, n);
		rc = framer_feed(r->f, chunk, n, on_line, r);
		free(chunk);
		if (rc != 0 && rc != -1)
			abort();
		if (rc == -1) {
			/* only the callback stops it */
			if (r->stop_after == 0 || r->calls < r->stop_after)
				abort();
			stopped = true;
			break;
		}
		check_framer(r);
		pos += n;
	}
	if (stopped)
		return;
	/* everything terminated was reported, in order */
	if (r->next != r->nexp)
		abort();
	if (r->tail_reported) {
		if (framer_pending(r->f) != 0)
			abort();
	} else {
		if (r->tail_len > r->max + 1)
			abort();	/* too long, yet never reported */
		if (framer_pending(r->f) != r->tail_len)
			abort();
		if (r->tail_len > 0 &&
		    memcmp(r->f->buf, r->stream + r->tail_off, r->tail_len) != 0)
			abort();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct framer f;
	struct run r;
	size_t sizes[64], maxchunk, i;
	uint32_t x;

	if (size < 5)
		return 0;
	memset(&r, 0, sizeof(r));
	if (data[1] & 0x80)
		r.max = 1 + ((size_t)data[0] | (size_t)(data[1] & 0x7f) << 8);
	else
		r.max = 1 + (size_t)data[0];
	maxchunk = 1 + (size_t)data[2];
	x = 0x9e3779b9u ^ ((uint32_t)data[3] << 8 | data[3]);
	for (i = 0; i < 64; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		sizes[i] = 1 + x % maxchunk;
	}
	r.stop_after = data[4] & 0x0f ? 0 : data[4] >> 4;
	r.stream = (const char *)data + 5;
	r.size = size - 5;

	r.exp = malloc((r.size + 1) * sizeof(*r.exp));
	if (r.exp == NULL)
		return 0;
	r.nexp = reference(r.stream, r.size, r.max, r.exp, &r.tail_off);
	r.tail_len = r.size - r.tail_off;
	r.f = &f;

	/* in chunks */
	framer_init(&f, r.max);
	feed(&r, sizes, 64);
	framer_reset(&f);
	if (f.buf != NULL || framer_pending(&f) != 0 || f.discarding)
		abort();

	/* again after the reset, in one piece, on the same framer */
	r.next = r.calls = 0;
	r.tail_reported = false;
	sizes[0] = r.size ? r.size : 1;
	feed(&r, sizes, 1);
	framer_reset(&f);

	free(r.exp);
	return 0;
}
