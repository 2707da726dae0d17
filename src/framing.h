#ifndef FORKD_FRAMING_H
#define FORKD_FRAMING_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Line framing: a request is a line ending in "\n" or "\r\n".  Complete lines
 * are handed over in place (no copy) when they arrive whole; only a partial
 * line is kept, in a buffer that grows on demand up to max_line and is given
 * back once the line completes.  A line longer than max_line is reported once
 * (line == NULL) and the rest of it is thrown away.
 */
struct framer {
	char	*buf;		/* partial line, NULL when none */
	size_t	 len, cap;
	size_t	 max;		/* max_line */
	bool	 discarding;	/* inside an over-long line */
	size_t	 used;		/* after a feed that fn stopped: bytes taken */
};

/* line == NULL: a line was longer than max; return -1 to stop feeding */
typedef int (*frame_fn)(void *arg, char *line, size_t len);

void	framer_init(struct framer *, size_t max_line);
void	framer_reset(struct framer *);
/* data is modified (NULs are written after each line); returns -1 when fn
 * stopped it, and then f->used says how many bytes of data were taken */
int	framer_feed(struct framer *, char *data, size_t n, frame_fn fn, void *arg);
/*
 * Hand over the unfinished line as if it had ended here (the chunk
 * protocol: what arrived is a request even without a line end); an
 * over-long line being discarded ends here too.
 */
int	framer_flush(struct framer *, frame_fn fn, void *arg);
/* bytes held for an unfinished line */
size_t	framer_pending(const struct framer *);

#endif
