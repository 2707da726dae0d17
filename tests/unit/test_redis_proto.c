/*
 * What the Redis channel layer reads back from Redis: reply shapes as the
 * server sends them (fed through hiredis' own reader), the envelope of a
 * published line, addresses and secrets.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "check.h"
#include "redis_proto.h"

#define HOST	"0123456789abcdef"

/* One reply from wire bytes, as the layer's connections would read it. */
static redisReply *
wire_n(const char *bytes, size_t len)
{
	redisReader *r = redisReaderCreate();
	void *reply = NULL;

	redisReaderFeed(r, bytes, len);
	if (redisReaderGetReply(r, &reply) != REDIS_OK)
		reply = NULL;
	redisReaderFree(r);
	return reply;
}

static redisReply *
wire(const char *bytes)
{
	return wire_n(bytes, strlen(bytes));
}

static void
test_envelope(void)
{
	char buf[256];
	struct rp_msg m;
	int n;

	n = rp_msg_format(buf, sizeof(buf), HOST ".42", 7, "lobby", "[a] hi\r\n", 8);
	CHECK(n > 0, "format");
	CHECK(rp_msg_parse(buf, (size_t)n, &m) == 0, "parse what we made");
	CHECK(strcmp(m.host, HOST) == 0 && strcmp(m.owner, HOST ".42") == 0, "%s", m.owner);
	CHECK(m.seq == 7 && strcmp(m.room, "lobby") == 0, "%llu %s",
	    (unsigned long long)m.seq, m.room);
	CHECK(m.len == 8 && memcmp(m.line, "[a] hi\r\n", 8) == 0, "line");
	/* an empty line is still a line; binary bytes pass */
	n = rp_msg_format(buf, sizeof(buf), HOST ".1", 0, "r", "\0\n", 2);
	CHECK(rp_msg_parse(buf, (size_t)n, &m) == 0 && m.len == 2, "binary");
	CHECK(rp_msg_format(buf, 20, HOST ".1", 0, "r", "x", 1) == -1, "too small");

	static const char *const bad[] = {
		"", "F1", "F2 " HOST ".1 1 r\nx", "F1 " HOST " 1 r\nx",
		"F1 0123456789abcdeg.1 1 r\nx", "F1 0123456789ABCDEF.1 1 r\nx",
		"F1 " HOST ".1x 1 r\nx", "F1 " HOST ". 1 r\nx", "F1 " HOST ".1 -1 r\nx",
		"F1 " HOST ".1 99999999999999999999999 r\nx", "F1 " HOST ".1 1 r",
		"F1 " HOST ".1 1 a/b\nx", "F1 " HOST ".1 1 \nx",
		"F1 " HOST ".1 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nx",
		"F1 " HOST ".1  1 r\nx", "F1 abc.1 1 r\nx",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(rp_msg_parse(bad[i], strlen(bad[i]), &m) == -1, "accepted '%s'", bad[i]);
}

static void
test_push(void)
{
	const char *p = NULL;
	size_t len = 0;
	redisReply *r;

	static const char msg[] = "*3\r\n$7\r\nmessage\r\n$10\r\nforkd:chat\r\n$5\r\nhe\0lo\r\n";

	r = wire_n(msg, sizeof(msg) - 1);
	CHECK(r != NULL && rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_MESSAGE &&
	    len == 5 && memcmp(p, "he\0lo", 5) == 0, "message");
	CHECK(rp_push_classify(r, "other:chat", &p, &len) == RP_PUSH_OTHER, "wrong channel");
	freeReplyObject(r);
	r = wire("*3\r\n$9\r\nsubscribe\r\n$10\r\nforkd:chat\r\n:1\r\n");
	CHECK(rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_SUBSCRIBED, "subscribe");
	freeReplyObject(r);
	r = wire("*2\r\n$4\r\npong\r\n$0\r\n\r\n");
	CHECK(rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_PONG, "pong");
	freeReplyObject(r);
	r = wire("-ERR Client output buffer limit\r\n");
	CHECK(rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_ERROR, "error");
	freeReplyObject(r);
	r = wire("*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n");
	CHECK(rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_OTHER, "bad shape");
	freeReplyObject(r);
	r = wire("*3\r\n$7\r\nmessage\r\n$10\r\nforkd:chat\r\n*0\r\n");
	CHECK(rp_push_classify(r, "forkd:chat", &p, &len) == RP_PUSH_OTHER, "array payload");
	freeReplyObject(r);
	CHECK(rp_push_classify(NULL, "forkd:chat", &p, &len) == RP_PUSH_OTHER, "NULL");
}

static void
test_lists(void)
{
	char buf[64];
	redisReply *r;
	long long v;

	r = wire("*3\r\n$5\r\nalice\r\n$3\r\nbob\r\n$3\r\na b\r\n");
	CHECK(rp_who(r, buf, sizeof(buf)) == 2 && strcmp(buf, "alice, bob") == 0,
	    "who: %s", buf);
	freeReplyObject(r);
	r = wire("*0\r\n");
	CHECK(rp_who(r, buf, sizeof(buf)) == 0 && buf[0] == '\0', "empty who");
	freeReplyObject(r);
	r = wire(":3\r\n");
	CHECK(rp_who(r, buf, sizeof(buf)) == -1, "who from an integer");
	CHECK(rp_reply_int(r, &v) == 0 && v == 3, "int");
	freeReplyObject(r);
	/* a long list is cut with "...", the count stays whole */
	r = wire("*4\r\n$20\r\naaaaaaaaaaaaaaaaaaaa\r\n$20\r\nbbbbbbbbbbbbbbbbbbbb\r\n"
	    "$20\r\ncccccccccccccccccccc\r\n$20\r\ndddddddddddddddddddd\r\n");
	CHECK(rp_who(r, buf, sizeof(buf)) == 4 && strstr(buf, "...") != NULL &&
	    strlen(buf) < sizeof(buf), "cut: %s", buf);
	freeReplyObject(r);
	r = wire("*4\r\n$5\r\nlobby\r\n:3\r\n$3\r\ndev\r\n:1\r\n");
	CHECK(rp_rooms(r, buf, sizeof(buf)) == 2 && strcmp(buf, "lobby (3), dev (1)") == 0,
	    "rooms: %s", buf);
	freeReplyObject(r);
	/* rooms emptied between the two reads are left out */
	r = wire("*4\r\n$5\r\nlobby\r\n:0\r\n$3\r\ndev\r\n:2\r\n");
	CHECK(rp_rooms(r, buf, sizeof(buf)) == 1 && strcmp(buf, "dev (2)") == 0, "%s", buf);
	freeReplyObject(r);
	r = wire("*3\r\n$5\r\nlobby\r\n:3\r\n$3\r\ndev\r\n");
	CHECK(rp_rooms(r, buf, sizeof(buf)) == -1, "odd rooms list");
	freeReplyObject(r);
	r = wire("$5\r\nlobby\r\n");
	CHECK(rp_rooms(r, buf, sizeof(buf)) == -1 && rp_reply_int(r, &v) == -1, "string");
	freeReplyObject(r);
}

static void
test_addresses(void)
{
	struct rp_addr a;
	char err[200];

	CHECK(rp_parse_address("127.0.0.1:6380", &a, err, sizeof(err)) == 0 &&
	    !a.is_unix && strcmp(a.host, "127.0.0.1") == 0 && a.port == 6380, "v4");
	CHECK(rp_parse_address("redis.example", &a, err, sizeof(err)) == 0 &&
	    a.port == 6379, "default port");
	CHECK(rp_parse_address("[::1]:7000", &a, err, sizeof(err)) == 0 &&
	    strcmp(a.host, "::1") == 0 && a.port == 7000, "v6");
	CHECK(rp_parse_address("unix:/run/redis/redis-server.sock", &a, err, sizeof(err)) == 0 &&
	    a.is_unix && strcmp(a.path, "/run/redis/redis-server.sock") == 0, "unix");
	CHECK(rp_parse_address("unix:run.sock", &a, err, sizeof(err)) == -1, "relative");
	CHECK(rp_parse_address("::1", &a, err, sizeof(err)) == -1, "bare v6");
	CHECK(rp_parse_address("h:0", &a, err, sizeof(err)) == -1, "port 0");
	CHECK(rp_parse_address("h:6379x", &a, err, sizeof(err)) == -1, "port junk");
	CHECK(rp_parse_address(":6379", &a, err, sizeof(err)) == -1, "no host");
	CHECK(rp_parse_address("a b:1", &a, err, sizeof(err)) == -1, "space");
	CHECK(rp_valid_prefix("forkd") && rp_valid_prefix("site-1:chat") &&
	    !rp_valid_prefix("") && !rp_valid_prefix("a b") && !rp_valid_prefix("a*"),
	    "prefixes");
}

static void
test_secret(void)
{
	char path[] = "/tmp/forkd-secret-XXXXXX", dir[] = "/tmp/forkd-creds-XXXXXX";
	char buf[32], err[300], tmpl[300];
	int fd;

	fd = mkstemp(path);
	CHECK(fd >= 0 && write(fd, "pw\nrest\n", 8) == 8, "mkstemp");
	close(fd);
	CHECK(rp_read_secret(path, buf, sizeof(buf), err, sizeof(err)) == 0 &&
	    strcmp(buf, "pw") == 0, "first line: %s", err);
	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	snprintf(tmpl, sizeof(tmpl), "%s/redis", dir);
	fd = open(tmpl, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0 && write(fd, "cred", 4) == 4, "cred");
	close(fd);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	CHECK(rp_read_secret("%d/redis", buf, sizeof(buf), err, sizeof(err)) == 0 &&
	    strcmp(buf, "cred") == 0, "%%d: %s", err);
	unsetenv("CREDENTIALS_DIRECTORY");
	CHECK(rp_read_secret("%d/redis", buf, sizeof(buf), err, sizeof(err)) == -1 &&
	    strstr(err, "CREDENTIALS_DIRECTORY") != NULL, "%s", err);
	CHECK(rp_read_secret("/nonexistent/x", buf, sizeof(buf), err, sizeof(err)) == -1 &&
	    strstr(err, "cannot open") != NULL, "%s", err);
	CHECK(rp_read_secret(path, buf, 3, err, sizeof(err)) == -1, "too long");
	unlink(tmpl);
	rmdir(dir);
	unlink(path);
}

/* A reply that announces a huge array fails, and costs nothing. */
static void
test_array_bound(void)
{
	static const char ok[] = "*3\r\n:1\r\n:2\r\n:3\r\n";
	static const char huge[] = "*300000000\r\n:1\r\n";
	redisReader *rd = redisReaderCreate();
	void *reply = NULL;

	CHECK(rd != NULL, "a reader");
	if (rd == NULL)
		return;
	rp_limit_reader(rd);
	redisReaderFeed(rd, ok, sizeof(ok) - 1);
	CHECK(redisReaderGetReply(rd, &reply) == REDIS_OK && reply != NULL &&
	    ((redisReply *)reply)->elements == 3, "a short array is read");
	if (reply != NULL)
		freeReplyObject(reply);
	reply = NULL;
	redisReaderFeed(rd, huge, sizeof(huge) - 1);
	CHECK(redisReaderGetReply(rd, &reply) == REDIS_ERR && reply == NULL,
	    "an array of 300000000 elements is refused");
	redisReaderFree(rd);
}

int
main(void)
{
	test_envelope();
	test_push();
	test_lists();
	test_addresses();
	test_secret();
	test_array_bound();
	return check_done();
}
