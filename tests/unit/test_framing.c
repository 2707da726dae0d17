/* Line framing: whole lines in place, partial lines kept, long lines cut. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "framing.h"
#include "util.h"

struct got {
	char	 lines[64][256];
	int	 n;
	int	 toolong;
	int	 stop_after;	/* 0 = never */
};

static int
collect(void *arg, char *line, size_t len)
{
	struct got *g = arg;

	if (line == NULL) {
		g->toolong++;
		return 0;
	}
	if (g->n < 64 && len < 256) {
		memcpy(g->lines[g->n], line, len);
		g->lines[g->n][len] = '\0';
	}
	g->n++;
	if (g->stop_after && g->n >= g->stop_after)
		return -1;
	return 0;
}

static void
feed(struct framer *f, const char *text, struct got *g)
{
	char *copy = strdup(text);

	framer_feed(f, copy, strlen(text), collect, g);
	free(copy);
}

int
main(void)
{
	struct framer f;
	struct got g;
	char big[300];

	/* two lines in one read, LF and CRLF */
	memset(&g, 0, sizeof(g));
	framer_init(&f, 64);
	feed(&f, "hello\r\nworld\n", &g);
	CHECK(g.n == 2, "got %d lines", g.n);
	CHECK(strcmp(g.lines[0], "hello") == 0, "line 0 '%s'", g.lines[0]);
	CHECK(strcmp(g.lines[1], "world") == 0, "line 1 '%s'", g.lines[1]);
	CHECK(framer_pending(&f) == 0, "pending %zu", framer_pending(&f));

	/* a line split over three reads, CR and LF in different reads */
	memset(&g, 0, sizeof(g));
	feed(&f, "spl", &g);
	feed(&f, "it\r", &g);
	CHECK(g.n == 0, "no line before the newline (%d)", g.n);
	CHECK(framer_pending(&f) == 6, "pending %zu", framer_pending(&f));
	feed(&f, "\nnext", &g);
	CHECK(g.n == 1 && strcmp(g.lines[0], "split") == 0, "split line '%s'", g.lines[0]);
	CHECK(framer_pending(&f) == 4, "partial 'next' kept: %zu", framer_pending(&f));
	framer_reset(&f);

	/* a lone CR in the middle stays data; an empty line is a line */
	memset(&g, 0, sizeof(g));
	feed(&f, "a\rb\n\n", &g);
	CHECK(g.n == 2, "got %d", g.n);
	CHECK(strcmp(g.lines[0], "a\rb") == 0, "CR kept");
	CHECK(g.lines[1][0] == '\0', "empty line");

	/* exactly max is fine, max+1 is too long, and the session goes on */
	memset(&g, 0, sizeof(g));
	memset(big, 'x', 64);
	strcpy(big + 64, "\n");
	feed(&f, big, &g);
	CHECK(g.n == 1 && g.toolong == 0, "64 bytes accepted (n=%d toolong=%d)", g.n, g.toolong);
	memset(&g, 0, sizeof(g));
	memset(big, 'y', 65);
	strcpy(big + 65, "\r\nafter\n");
	feed(&f, big, &g);
	CHECK(g.toolong == 1, "65 bytes too long (%d)", g.toolong);
	CHECK(g.n == 1 && strcmp(g.lines[0], "after") == 0, "next line served");

	/* a long line arriving in pieces: reported once, memory bounded */
	memset(&g, 0, sizeof(g));
	memset(big, 'z', 200);
	big[200] = '\0';
	feed(&f, big, &g);
	CHECK(g.toolong == 1, "reported when it passes max (%d)", g.toolong);
	CHECK(framer_pending(&f) == 0, "nothing kept while discarding (%zu)", framer_pending(&f));
	feed(&f, big, &g);
	feed(&f, big, &g);
	CHECK(g.toolong == 1, "reported once (%d)", g.toolong);
	feed(&f, "tail\nok\n", &g);
	CHECK(g.n == 1 && strcmp(g.lines[0], "ok") == 0, "rest of the long line dropped");
	CHECK(f.cap <= 66, "buffer never above max_line+2 (%zu)", f.cap);

	/* a partial line that becomes too long when completed */
	memset(&g, 0, sizeof(g));
	memset(big, 'p', 60);
	big[60] = '\0';
	feed(&f, big, &g);
	feed(&f, "0123456789\nz\n", &g);
	CHECK(g.toolong == 1 && g.n == 1 && strcmp(g.lines[0], "z") == 0,
	    "completed partial too long (toolong=%d n=%d)", g.toolong, g.n);

	/* NUL bytes inside a line are data */
	memset(&g, 0, sizeof(g));
	{
		char nul[] = { 'a', '\0', 'b', '\n' };

		framer_feed(&f, nul, sizeof(nul), collect, &g);
		CHECK(g.n == 1, "line with NUL delivered");
	}

	/* the callback can stop the feed (quit) */
	memset(&g, 0, sizeof(g));
	g.stop_after = 1;
	{
		char text[] = "quit\nmore\n";

		CHECK(framer_feed(&f, text, strlen(text), collect, &g) == -1, "stop reported");
		CHECK(g.n == 1, "nothing after the stop (%d)", g.n);
	}
	framer_reset(&f);

	/* timeouts: a stamp taken after the reader's clock is fresh, not ancient */
	CHECK(older_than(10000, 4000, 5000), "6 s old is older than 5 s");
	CHECK(older_than(10000, 5000, 5000), "exactly the limit counts");
	CHECK(!older_than(10000, 6000, 5000), "4 s old is not");
	CHECK(!older_than(10000, 10001, 5000), "a stamp from after `now` is fresh");
	CHECK(!older_than(10000, 10000, 1), "a stamp of `now` is fresh");
	/* chunk: what arrived ends a request even without a line end */
	memset(&g, 0, sizeof(g));
	framer_init(&f, 64);
	feed(&f, "67", &g);
	CHECK(g.n == 0, "no line before the flush (%d)", g.n);
	framer_flush(&f, collect, &g);
	CHECK(g.n == 1 && strcmp(g.lines[0], "67") == 0, "the tail is a request");
	CHECK(framer_pending(&f) == 0, "nothing kept after the flush");
	feed(&f, "add,7,4\r\nsquare 3\r", &g);
	framer_flush(&f, collect, &g);
	CHECK(g.n == 3 && strcmp(g.lines[1], "add,7,4") == 0 &&
	    strcmp(g.lines[2], "square 3") == 0, "a trailing CR is not part of it ('%s')",
	    g.lines[2]);
	feed(&f, "ping\n", &g);
	framer_flush(&f, collect, &g);
	CHECK(g.n == 4, "a whole line is not given twice (%d)", g.n);
	framer_flush(&f, collect, &g);
	CHECK(g.n == 4, "an empty flush gives nothing (%d)", g.n);
	/* an over-long tail is reported once; the next chunk starts afresh */
	memset(big, 'x', 100);
	big[100] = '\0';
	feed(&f, big, &g);
	framer_flush(&f, collect, &g);
	CHECK(g.toolong == 1, "too long once (%d)", g.toolong);
	feed(&f, "ok", &g);
	framer_flush(&f, collect, &g);
	CHECK(g.n == 5 && strcmp(g.lines[4], "ok") == 0, "the next chunk is whole ('%s')",
	    g.lines[4]);
	framer_reset(&f);

	return check_done();
}
