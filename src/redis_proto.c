/*
 * The Redis channel layer's formats and reply shapes (redis_proto.h).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_proto.h"

static bool
valid_name(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > RP_NAME_MAX)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
			return false;
	return true;
}

static int
parse_port(const char *s, int *port)
{
	char *end;
	long v;

	if (*s == '\0' || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 1 || v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

int
rp_parse_address(const char *text, struct rp_addr *a, char *err, size_t errlen)
{
	const char *colon;
	size_t hlen;

	memset(a, 0, sizeof(*a));
	a->port = 6379;
	if (strncmp(text, "unix:", 5) == 0) {
		const char *p = text + 5;

		if (p[0] != '/') {
			snprintf(err, errlen, "a unix socket must be an absolute path "
			    "(\"unix:/run/redis/redis-server.sock\")");
			return -1;
		}
		if (strlen(p) >= sizeof(a->path)) {
			snprintf(err, errlen, "the socket path is too long (at most %zu bytes)",
			    sizeof(a->path) - 1);
			return -1;
		}
		a->is_unix = true;
		snprintf(a->path, sizeof(a->path), "%s", p);
		return 0;
	}
	if (text[0] == '[') {
		const char *close = strchr(text, ']');

		if (close == NULL || close == text + 1) {
			snprintf(err, errlen, "an IPv6 address goes in brackets: \"[::1]:6379\"");
			return -1;
		}
		hlen = (size_t)(close - text - 1);
		if (hlen >= sizeof(a->host))
			goto toolong;
		memcpy(a->host, text + 1, hlen);
		if (close[1] == '\0')
			return 0;
		if (close[1] != ':' || parse_port(close + 2, &a->port) != 0)
			goto badport;
		return 0;
	}
	colon = strchr(text, ':');
	if (colon != NULL && strchr(colon + 1, ':') != NULL) {
		snprintf(err, errlen, "an IPv6 address goes in brackets: \"[::1]:6379\"");
		return -1;
	}
	hlen = colon != NULL ? (size_t)(colon - text) : strlen(text);
	if (hlen == 0) {
		snprintf(err, errlen, "no host: use \"HOST:PORT\" or \"unix:/PATH\"");
		return -1;
	}
	if (hlen >= sizeof(a->host))
		goto toolong;
	memcpy(a->host, text, hlen);
	if (strspn(a->host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789.-_") != hlen) {
		snprintf(err, errlen, "'%s' is not a host name or address", a->host);
		return -1;
	}
	if (colon != NULL && parse_port(colon + 1, &a->port) != 0)
		goto badport;
	return 0;
toolong:
	snprintf(err, errlen, "the host name is too long");
	return -1;
badport:
	snprintf(err, errlen, "the port must be a number from 1 to 65535");
	return -1;
}

bool
rp_valid_prefix(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= RP_PREFIX_MAX &&
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789_-.:") == n;
}

int
rp_msg_format(char *buf, size_t cap, const char *owner, uint64_t seq,
    const char *room, const char *line, size_t len)
{
	int n;

	n = snprintf(buf, cap, "F1 %s %" PRIu64 " %s\n", owner, seq, room);
	if (n < 0 || (size_t)n >= cap || cap - (size_t)n < len)
		return -1;
	memcpy(buf + n, line, len);
	return n + (int)len;
}

/* the next space-ended field of [*p, end): its length, or -1 */
static int
field(const char **p, const char *end, char stop, const char **start)
{
	const char *q = *p;

	*start = q;
	while (q < end && *q != stop && *q != ' ' && *q != '\n')
		q++;
	if (q == end || *q != stop || q == *start)
		return -1;
	*p = q + 1;
	return (int)(q - *start);
}

int
rp_msg_parse(const char *buf, size_t len, struct rp_msg *m)
{
	const char *p = buf, *end = buf + len, *f, *dot, *q;
	char num[24];
	char *e;
	int n;

	memset(m, 0, sizeof(*m));
	if (len < 3 || memcmp(buf, "F1 ", 3) != 0)
		return -1;
	p += 3;
	/* OWNER = HOST.PID */
	if ((n = field(&p, end, ' ', &f)) < 0 || n > RP_OWNER_MAX)
		return -1;
	dot = memchr(f, '.', (size_t)n);
	if (dot == NULL || dot - f != RP_HOST_LEN || dot + 1 == f + n)
		return -1;
	for (q = f; q < dot; q++)
		if (!isdigit((unsigned char)*q) && (*q < 'a' || *q > 'f'))
			return -1;
	for (q = dot + 1; q < f + n; q++)
		if (!isdigit((unsigned char)*q))
			return -1;
	memcpy(m->owner, f, (size_t)n);
	memcpy(m->host, f, RP_HOST_LEN);
	/* SEQ */
	if ((n = field(&p, end, ' ', &f)) < 0 || n >= (int)sizeof(num))
		return -1;
	memcpy(num, f, (size_t)n);
	num[n] = '\0';
	if (!isdigit((unsigned char)num[0]))
		return -1;
	errno = 0;
	m->seq = strtoull(num, &e, 10);
	if (errno != 0 || *e != '\0')
		return -1;
	/* ROOM */
	if ((n = field(&p, end, '\n', &f)) < 0 || !valid_name(f, (size_t)n))
		return -1;
	memcpy(m->room, f, (size_t)n);
	m->line = p;
	m->len = (size_t)(end - p);
	return 0;
}

static bool
is_str(const redisReply *r, const char *s)
{
	size_t n = strlen(s);

	return r != NULL && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
	    (size_t)r->len == n && strncasecmp(r->str, s, n) == 0;
}

enum rp_push
rp_push_classify(const redisReply *r, const char *channel, const char **payload,
    size_t *len)
{
	if (r == NULL)
		return RP_PUSH_OTHER;
	if (r->type == REDIS_REPLY_ERROR)
		return RP_PUSH_ERROR;
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 2)
		return RP_PUSH_OTHER;
	if (r->elements == 3 && is_str(r->element[0], "message") &&
	    r->element[1]->type == REDIS_REPLY_STRING &&
	    r->element[2]->type == REDIS_REPLY_STRING) {
		if (strlen(channel) != (size_t)r->element[1]->len ||
		    memcmp(r->element[1]->str, channel, (size_t)r->element[1]->len) != 0)
			return RP_PUSH_OTHER;
		*payload = r->element[2]->str;
		*len = (size_t)r->element[2]->len;
		return RP_PUSH_MESSAGE;
	}
	if (r->elements == 3 && is_str(r->element[0], "subscribe"))
		return RP_PUSH_SUBSCRIBED;
	if (r->elements == 2 && is_str(r->element[0], "pong"))
		return RP_PUSH_PONG;
	return RP_PUSH_OTHER;
}

int
rp_reply_int(const redisReply *r, long long *v)
{
	if (r == NULL || r->type != REDIS_REPLY_INTEGER)
		return -1;
	*v = r->integer;
	return 0;
}

void
rp_list_add(char *buf, size_t len, size_t *used, const char *item, bool *full)
{
	int n;

	if (*full || len < 8)
		return;
	n = snprintf(buf + *used, len - *used, "%s%s", *used ? ", " : "", item);
	if (n < 0 || (size_t)n >= len - *used - 5) {
		snprintf(buf + *used, len - *used, "%s...", *used ? ", " : "");
		*used += strlen(buf + *used);
		*full = true;
		return;
	}
	*used += (size_t)n;
}

int
rp_who(const redisReply *r, char *buf, size_t len)
{
	size_t i, used = 0;
	bool full = false;
	int count = 0;

	if (len > 0)
		buf[0] = '\0';
	if (r == NULL || r->type != REDIS_REPLY_ARRAY)
		return -1;
	for (i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i];

		/* only what forkd itself could have stored is shown */
		if (e->type != REDIS_REPLY_STRING || !valid_name(e->str, (size_t)e->len))
			continue;
		rp_list_add(buf, len, &used, e->str, &full);
		count++;
	}
	return count;
}

int
rp_rooms(const redisReply *r, char *buf, size_t len)
{
	size_t i, used = 0;
	bool full = false;
	int count = 0;

	if (len > 0)
		buf[0] = '\0';
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
		return -1;
	for (i = 0; i + 1 < r->elements; i += 2) {
		const redisReply *name = r->element[i], *n = r->element[i + 1];
		char item[RP_NAME_MAX + 24];

		if (name->type != REDIS_REPLY_STRING ||
		    !valid_name(name->str, (size_t)name->len) ||
		    n->type != REDIS_REPLY_INTEGER || n->integer <= 0)
			continue;
		snprintf(item, sizeof(item), "%s (%lld)", name->str, n->integer);
		rp_list_add(buf, len, &used, item, &full);
		count++;
	}
	return count;
}

int
rp_read_secret(const char *path, char *buf, size_t len, char *err, size_t errlen)
{
	char full[4096];
	size_t o = 0;
	const char *p;
	ssize_t n;
	int fd;

	for (p = path; *p != '\0'; p++) {
		const char *add = NULL;
		char one[2] = { *p, '\0' };

		if (*p == '%' && p[1] == 'd') {
			add = getenv("CREDENTIALS_DIRECTORY");
			if (add == NULL || add[0] == '\0') {
				snprintf(err, errlen, "'%s' names %%d but CREDENTIALS_DIRECTORY "
				    "is not set (LoadCredential= in the unit sets it)", path);
				return -1;
			}
			p++;
		} else if (*p == '%' && p[1] == '%') {
			add = "%";
			p++;
		} else {
			add = one;
		}
		if (o + strlen(add) >= sizeof(full)) {
			snprintf(err, errlen, "'%s': path too long", path);
			return -1;
		}
		memcpy(full + o, add, strlen(add));
		o += strlen(add);
	}
	full[o] = '\0';
	fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open '%s': %s", full, strerror(errno));
		return -1;
	}
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0) {
		snprintf(err, errlen, "cannot read '%s': %s", full, strerror(errno));
		return -1;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	if ((size_t)n == len - 1 && strlen(buf) == len - 1) {
		snprintf(err, errlen, "'%s': the secret is too long (at most %zu bytes)",
		    full, len - 2);
		return -1;
	}
	if (buf[0] == '\0') {
		snprintf(err, errlen, "'%s' is empty", full);
		return -1;
	}
	return 0;
}

/* hiredis' own reply functions, with a bound on arrays */
static redisReplyObjectFunctions limited_fn;
static void	*(*plain_array)(const redisReadTask *, int);
static pthread_once_t limited_once = PTHREAD_ONCE_INIT;
static bool	 limited_ok;

static void *
limited_array(const redisReadTask *task, int elements)
{
	if (elements < 0 || elements > RP_MAX_ELEMENTS)
		return NULL;	/* hiredis fails the reply */
	return plain_array(task, elements);
}

/* Once per process: the table every new reader starts with, copied. */
static void
limited_init(void)
{
	redisReader *r = redisReaderCreate();

	if (r == NULL || r->fn == NULL || r->fn->createArray == NULL) {
		if (r != NULL)
			redisReaderFree(r);
		return;
	}
	limited_fn = *r->fn;
	plain_array = r->fn->createArray;
	limited_fn.createArray = limited_array;
	limited_ok = true;
	redisReaderFree(r);
}

void
rp_limit_reader(redisReader *r)
{
	pthread_once(&limited_once, limited_init);
	if (r != NULL && limited_ok)
		r->fn = &limited_fn;
}
