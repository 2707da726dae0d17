/*
 * What forkd's Redis channel layer (chan_redis.c) writes to and reads back
 * from Redis, as pure functions: the address syntax, the published line's
 * envelope, the shapes of the replies.  No I/O here, so the unit tests and
 * the fuzzer reach every branch.
 */
#ifndef FORKD_REDIS_PROTO_H
#define FORKD_REDIS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define RP_NAME_MAX	32	/* a room or a nick */
#define RP_HOST_LEN	16	/* hex digits of a host id */
#define RP_OWNER_MAX	40	/* "HOST.PID" */
#define RP_PREFIX_MAX	64

/* "HOST:PORT", "[V6]:PORT", "HOST" (port 6379) or "unix:/PATH" */
struct rp_addr {
	bool	 is_unix;
	char	 host[256];
	int	 port;
	char	 path[108];
};
int	rp_parse_address(const char *text, struct rp_addr *, char *err, size_t errlen);
/* a key prefix: 1-64 of letters, digits, '_', '-', '.', ':' */
bool	rp_valid_prefix(const char *);

/*
 * A line for the rooms of other hosts, on the channel PREFIX:chat:
 *   "F1 OWNER SEQ ROOM\n" LINE
 * OWNER is "HOST.PID" (the sending worker), SEQ its count of lines sent.
 */
struct rp_msg {
	char		 owner[RP_OWNER_MAX + 1];
	char		 host[RP_HOST_LEN + 1];
	uint64_t	 seq;
	char		 room[RP_NAME_MAX + 1];
	const char	*line;		/* into the parsed buffer */
	size_t		 len;
};
/* bytes written, or -1 when it does not fit in cap */
int	rp_msg_format(char *buf, size_t cap, const char *owner, uint64_t seq,
	    const char *room, const char *line, size_t len);
int	rp_msg_parse(const char *buf, size_t len, struct rp_msg *);

/* What a subscribed connection read. */
enum rp_push {
	RP_PUSH_MESSAGE,	/* payload set */
	RP_PUSH_SUBSCRIBED,
	RP_PUSH_PONG,
	RP_PUSH_ERROR,		/* an error reply: the link is unusable */
	RP_PUSH_OTHER		/* anything else: ignored */
};
enum rp_push rp_push_classify(const redisReply *, const char *channel,
	    const char **payload, size_t *len);

/* An integer reply (the presence script's verdict). */
int	rp_reply_int(const redisReply *, long long *);
/* /who: an array of nicks -> "a, b, c" in buf; the count, -1 on a bad shape */
int	rp_who(const redisReply *, char *buf, size_t len);
/* /rooms: an array of name, count, name, count... -> "lobby (3), dev (1)" */
int	rp_rooms(const redisReply *, char *buf, size_t len);
/* append "sep item" to buf; once it no longer fits, "..." and *full */
void	rp_list_add(char *buf, size_t len, size_t *used, const char *item, bool *full);

/*
 * Read a secret (the first line of the file): "%d" in the path stands for
 * $CREDENTIALS_DIRECTORY (systemd's LoadCredential=), "%%" for '%'.
 * -1 with err filled on failure.
 */
int	rp_read_secret(const char *path, char *buf, size_t len, char *err,
	    size_t errlen);

/*
 * Arrays in Redis replies hold at most this many elements: hiredis 0.14
 * allocates an array's room as soon as it reads the count, so "*300000000"
 * alone would cost gigabytes.  A longer one fails the reply (and the link
 * is made again), like a reply hiredis cannot read.
 */
#define RP_MAX_ELEMENTS		(1 << 20)
/* Put that bound on a reader (a context's c->reader, or a bare one). */
void	rp_limit_reader(redisReader *);

#endif
