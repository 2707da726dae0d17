/*
 * Unit tests for calc_eval(): a table of request -> reply, then the reply
 * buffer's edges, then integer results checked against 128-bit arithmetic
 * and a sweep of random lines checked for the reply's invariants.
 *
 * Exit status 0 when everything passed, 1 otherwise; the last line printed
 * is "N passed, M failed".
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calc.h"

#define OUTSZ	CALC_MIN_OUT

struct tcase {
	const char	*in;
	size_t		 len;
	int		 rc;
	const char	*want;
};

/* sizeof keeps any embedded NUL in the request */
#define OK(in, want)	{ in, sizeof(in) - 1, 0, want }
#define ERR(in, want)	{ in, sizeof(in) - 1, -1, want }

#define E_UNKNOWN(tok)	"ERR unknown operation '" tok \
			"' (use add, sub, mul, div, square or a number)"
#define E_NAN(tok)	"ERR not a number: '" tok "' (expected e.g. 7, -3 or 2.5)"
#define E_OVERFLOW	"ERR overflow (integers must stay within " \
			"-9223372036854775808..9223372036854775807)"
#define E_DOVERFLOW	"ERR overflow (decimals must stay within about -1.8e308..1.8e308)"
#define E_DIVZERO	"ERR division by zero (the divisor must not be 0)"
#define E_NEEDS2(op)	"ERR " op " needs 2 numbers (e.g. " op " 7 4)"
#define E_NEEDS1(op)	"ERR " op " needs 1 number (e.g. " op " 67)"
#define E_EMPTY		"ERR empty request (try: add 7 4)"
#define E_NOOP		"ERR missing operation (try: add 7 4; a lone number is squared)"

static const struct tcase cases[] = {
	/* separators and case */
	OK("add,7,4", "11"),
	OK("add 7 4", "11"),
	OK("add, 7, 4", "11"),
	OK("add ,7 ,4", "11"),
	OK("add , 7 , 4", "11"),
	OK("add\t7\t4", "11"),
	OK("add \t 7\t, \t4", "11"),
	OK("add    7     4", "11"),
	OK("  add 7 4  ", "11"),
	OK("\tadd 7 4\t", "11"),
	OK(" \t add,7,4 \t ", "11"),
	OK("ADD 1 2", "3"),
	OK("Add 1 2", "3"),
	OK("aDd 1 2", "3"),

	/* the four operations and square */
	OK("sub 7 4", "3"),
	OK("sub 4 7", "-3"),
	OK("SUB,10,3", "7"),
	OK("mul 6 7", "42"),
	OK("MuL 6 -7", "-42"),
	OK("mul 0 -7", "0"),
	OK("div 8 2", "4"),
	OK("div -8 2", "-4"),
	OK("div 7 2", "3.5"),
	OK("div -7 2", "-3.5"),
	OK("div 7 -2", "-3.5"),
	OK("div 1 3", "0.333333333333333"),
	OK("div 2 3", "0.666666666666667"),
	OK("div -1 3", "-0.333333333333333"),
	OK("div 0 5", "0"),
	OK("div -0 5", "0"),
	OK("div 0 -5", "0"),
	OK("DIV 1 8", "0.125"),
	OK("square 67", "4489"),
	OK("SQUARE 67", "4489"),
	OK("square -67", "4489"),
	OK("square 0", "0"),
	OK("67", "4489"),
	OK(" 67 ", "4489"),
	OK("\t67", "4489"),
	OK("-5", "25"),
	OK("+5", "25"),
	OK("0", "0"),
	OK("-0", "0"),
	OK("add -3 -4", "-7"),
	OK("add +3 -4", "-1"),
	OK("sub -3 -4", "1"),
	OK("mul -3 -4", "12"),
	OK("add 0009 1", "10"),
	OK("add -0 -0", "0"),

	/* the edges of int64 */
	OK("add 9223372036854775807 0", "9223372036854775807"),
	OK("add -9223372036854775808 0", "-9223372036854775808"),
	ERR("9223372036854775807 ", E_OVERFLOW),
	OK("sub -9223372036854775807 1", "-9223372036854775808"),
	OK("add 9223372036854775806 1", "9223372036854775807"),
	OK("add 00000000000000000000009223372036854775807 0",
	    "9223372036854775807"),
	ERR("add 9223372036854775807 1", E_OVERFLOW),
	ERR("add 1 9223372036854775807", E_OVERFLOW),
	ERR("add -9223372036854775808 -1", E_OVERFLOW),
	ERR("sub -9223372036854775808 1", E_OVERFLOW),
	ERR("sub 0 -9223372036854775808", E_OVERFLOW),
	ERR("sub 9223372036854775807 -1", E_OVERFLOW),
	OK("sub -1 -9223372036854775808", "9223372036854775807"),
	OK("mul 3037000499 3037000499", "9223372030926249001"),
	OK("mul -3037000499 3037000499", "-9223372030926249001"),
	ERR("mul 3037000500 3037000500", E_OVERFLOW),
	ERR("mul -3037000500 -3037000500", E_OVERFLOW),
	ERR("mul -9223372036854775808 -1", E_OVERFLOW),
	ERR("mul -1 -9223372036854775808", E_OVERFLOW),
	OK("mul -9223372036854775808 1", "-9223372036854775808"),
	ERR("mul 4611686018427387904 2", E_OVERFLOW),
	OK("mul -4611686018427387904 2", "-9223372036854775808"),
	ERR("mul 9223372036854775807 9223372036854775807", E_OVERFLOW),
	OK("square 3037000499", "9223372030926249001"),
	OK("square -3037000499", "9223372030926249001"),
	OK("3037000499", "9223372030926249001"),
	ERR("square 3037000500", E_OVERFLOW),
	ERR("square -3037000500", E_OVERFLOW),
	ERR("3037000500", E_OVERFLOW),
	ERR("square -9223372036854775808", E_OVERFLOW),
	ERR("div -9223372036854775808 -1", E_OVERFLOW),
	OK("div -9223372036854775808 1", "-9223372036854775808"),
	OK("div -9223372036854775808 2", "-4611686018427387904"),
	OK("div -9223372036854775808 -9223372036854775808", "1"),
	OK("div 9223372036854775807 -1", "-9223372036854775807"),
	OK("div 9223372036854775807 9223372036854775807", "1"),
	OK("div 9223372036854775807 2", "4.61168601842739e+18"),
	OK("div 1 9223372036854775807", "1.0842021724855e-19"),

	/* parse overflow */
	ERR("9223372036854775808", E_OVERFLOW),
	ERR("-9223372036854775809", E_OVERFLOW),
	ERR("add 9223372036854775808 0", E_OVERFLOW),
	ERR("add 0 9223372036854775808", E_OVERFLOW),
	ERR("sub -9223372036854775809 0", E_OVERFLOW),
	ERR("add 99999999999999999999999 0", E_OVERFLOW),
	ERR("div 1 99999999999999999999999", E_OVERFLOW),
	ERR("add 18446744073709551616 0", E_OVERFLOW),

	/* decimals: any '.' or exponent switches the operation to double */
	OK("add 1.5 2.25", "3.75"),
	OK("add 1.5 2.5", "4"),
	OK("mul 0.1 3", "0.3"),
	OK("add 0.1 0.2", "0.3"),
	OK("sub 0.3 0.1", "0.2"),
	OK("sub 1 1.5", "-0.5"),
	OK("mul 2.0 3", "6"),
	OK("mul 2 3.", "6"),
	OK("div 7.0 2", "3.5"),
	OK("div 1.0 3", "0.333333333333333"),
	OK("div 10 4.0", "2.5"),
	OK("div 9 3.0", "3"),
	OK("add .5 .25", "0.75"),
	OK("add -.5 +.25", "-0.25"),
	OK("add 5. 1", "6"),
	OK("add 1e3 1", "1001"),
	OK("add 1E3 1", "1001"),
	OK("add 1e+3 1", "1001"),
	OK("add 2.5e-1 0", "0.25"),
	OK("add 1.5E2 0", "150"),
	OK("mul 1e10 1e10", "1e+20"),
	OK("mul 1e-10 1e-10", "1e-20"),
	OK("mul 123456789 1000000.0", "123456789000000"),
	OK("mul 1234567890 1000000.0", "1.23456789e+15"),
	OK("add 123456789012345678 0.5", "1.23456789012346e+17"),
	OK("add 9223372036854775807 0.5", "9.22337203685478e+18"),
	OK("add 9223372036854775808 0.0", "9.22337203685478e+18"),
	OK("add 99999999999999999999999 0.0", "1e+23"),
	OK("square 1.5", "2.25"),
	OK("1.5", "2.25"),
	OK("-1.5", "2.25"),
	OK(".5", "0.25"),
	OK("1e2", "10000"),
	OK("square 0.1", "0.01"),

	/* never "-0" */
	OK("-0.0", "0"),
	OK("mul -0.0 5", "0"),
	OK("mul -1.5 0", "0"),
	OK("mul 1.5 -0", "0"),
	OK("sub 0.0 0.0", "0"),
	OK("add -0.0 -0.0", "0"),
	OK("div 0.0 -5", "0"),
	OK("div -0 -5.5", "0"),
	OK("square -0.0", "0"),

	/* double overflow and underflow */
	ERR("mul 1e200 1e200", E_DOVERFLOW),
	ERR("mul -1e200 1e200", E_DOVERFLOW),
	ERR("square 1e200", E_DOVERFLOW),
	ERR("1e200", E_DOVERFLOW),
	ERR("add 1.7e308 1.7e308", E_DOVERFLOW),
	ERR("sub -1.7e308 1.7e308", E_DOVERFLOW),
	ERR("div 1e300 1e-300", E_DOVERFLOW),
	ERR("1e999", E_DOVERFLOW),
	ERR("add 1e999 1", E_DOVERFLOW),
	ERR("add 1 -1e999", E_DOVERFLOW),
	OK("add 1e-999 1", "1"),
	OK("mul 1e-200 1e-200", "0"),
	OK("mul -1e-200 1e-200", "0"),
	OK("add 4.9e-324 0", "4.94065645841247e-324"),

	/* division by zero */
	ERR("div 1 0", E_DIVZERO),
	ERR("div 0 0", E_DIVZERO),
	ERR("div -9223372036854775808 0", E_DIVZERO),
	ERR("div 1 0.0", E_DIVZERO),
	ERR("div 1 -0.0", E_DIVZERO),
	ERR("div 1.5 0", E_DIVZERO),
	ERR("div 0.0 0", E_DIVZERO),
	ERR("div 1 0e5", E_DIVZERO),
	ERR("div 1 1e-999", E_DIVZERO),

	/* the empty request */
	ERR("", E_EMPTY),
	ERR(" ", E_EMPTY),
	ERR("   ", E_EMPTY),
	ERR("\t \t", E_EMPTY),

	/* unknown operations */
	ERR("pow 2 3", E_UNKNOWN("pow")),
	ERR("POW 2 3", E_UNKNOWN("POW")),
	ERR("hello", E_UNKNOWN("hello")),
	ERR("addx 1 2", E_UNKNOWN("addx")),
	ERR("ad 1 2", E_UNKNOWN("ad")),
	ERR("add7 4", E_UNKNOWN("add7")),
	ERR("squared 4", E_UNKNOWN("squared")),
	ERR(",add 1 2", E_UNKNOWN("")),
	ERR(",", E_UNKNOWN("")),
	ERR(" , ", E_UNKNOWN("")),
	ERR("one", E_UNKNOWN("one")),
	ERR("'quoted'", E_UNKNOWN("'quoted'")),

	/* operand counts */
	ERR("add", E_NEEDS2("add")),
	ERR("add 1", E_NEEDS2("add")),
	ERR("ADD 1", E_NEEDS2("add")),
	ERR("add 1 2 3", E_NEEDS2("add")),
	ERR("add 1 2,", E_NEEDS2("add")),
	ERR("add 1,000 2", E_NEEDS2("add")),
	ERR("add 1 2 3 4 5 6 7 8 9", E_NEEDS2("add")),
	ERR("sub 1", E_NEEDS2("sub")),
	ERR("mul", E_NEEDS2("mul")),
	ERR("div 1", E_NEEDS2("div")),
	ERR("div 1 2 0", E_NEEDS2("div")),
	ERR("square", E_NEEDS1("square")),
	ERR("square 1 2", E_NEEDS1("square")),
	ERR("square,", E_NAN("")),
	ERR("7 4", E_NOOP),
	ERR("7,4", E_NOOP),
	ERR("-5 add 3", E_NOOP),

	/* bad numbers */
	ERR("add one 2", E_NAN("one")),
	ERR("add 1 two", E_NAN("two")),
	ERR("add one two", E_NAN("one")),
	ERR("add nan 1", E_NAN("nan")),
	ERR("add NaN 1", E_NAN("NaN")),
	ERR("add 1 inf", E_NAN("inf")),
	ERR("add 1 -inf", E_NAN("-inf")),
	ERR("add infinity 1", E_NAN("infinity")),
	ERR("add 1 Infinity", E_NAN("Infinity")),
	ERR("nan", E_NAN("nan")),
	ERR("inf", E_NAN("inf")),
	ERR("-inf", E_NAN("-inf")),
	ERR("INFINITY", E_NAN("INFINITY")),
	ERR("add 0x10 1", E_NAN("0x10")),
	ERR("0x10", E_NAN("0x10")),
	ERR("0X1p3", E_NAN("0X1p3")),
	ERR("add +-1 2", E_NAN("+-1")),
	ERR("add -+1 2", E_NAN("-+1")),
	ERR("add --1 2", E_NAN("--1")),
	ERR("+-1", E_NAN("+-1")),
	ERR("add,,2", E_NAN("")),
	ERR("add 1,,", E_NEEDS2("add")),
	ERR("add , , 2", E_NAN("")),
	ERR("add 1,", E_NAN("")),
	ERR("add 1e 2", E_NAN("1e")),
	ERR("add 1e+ 2", E_NAN("1e+")),
	ERR("add 1e2.5 2", E_NAN("1e2.5")),
	ERR("add 1e2e3 2", E_NAN("1e2e3")),
	ERR("add . 2", E_NAN(".")),
	ERR("add - 2", E_NAN("-")),
	ERR("add + 2", E_NAN("+")),
	ERR("add -. 2", E_NAN("-.")),
	ERR("add .e1 2", E_NAN(".e1")),
	ERR("add e1 2", E_NAN("e1")),
	ERR("add 1.2.3 2", E_NAN("1.2.3")),
	ERR("add 1..2 0", E_NAN("1..2")),
	ERR("add 1_000 2", E_NAN("1_000")),
	ERR("add 12abc 1", E_NAN("12abc")),
	ERR("add 1- 1", E_NAN("1-")),
	ERR("add 1 2-3", E_NAN("2-3")),
	ERR("add 1 (2)", E_NAN("(2)")),
	ERR("1x", E_NAN("1x")),
	ERR("1 x", E_NOOP),
	ERR("-add", E_NAN("-add")),
	ERR(".", E_NAN(".")),
	ERR("add 1 \xd9\xa1", E_NAN("??")),
	ERR("add 1 2\r", E_NAN("2?")),
	ERR("add one 9223372036854775808", E_NAN("one")),
	ERR("add 9223372036854775808 one", E_NAN("one")),

	/* embedded NULs are bytes like any other */
	ERR("add 1\0 2", E_NAN("1?")),
	ERR("add 1 2\0", E_NAN("2?")),
	ERR("add 1 \0" "2", E_NAN("?2")),
	ERR("add\0 1 2", E_UNKNOWN("add?")),
	ERR("\0", E_UNKNOWN("?")),
	ERR("\0\0\0", E_UNKNOWN("???")),
	ERR("7\0", E_NAN("7?")),

	/* other bytes that must not reach the reply as they are */
	ERR("pow\r\n2", E_UNKNOWN("pow??2")),
	ERR("\x1b[2J 1 2", E_UNKNOWN("?[2J")),
	ERR("\xff\xfe", E_UNKNOWN("??")),
	ERR("add 1 2\x7f", E_NAN("2?")),

	/* a quoted token is cut at 32 bytes */
	ERR("abcdefghijklmnopqrstuvwxyz012345",
	    E_UNKNOWN("abcdefghijklmnopqrstuvwxyz012345")),
	ERR("abcdefghijklmnopqrstuvwxyz0123456",
	    E_UNKNOWN("abcdefghijklmnopqrstuvwxyz012345...")),
	ERR("add 1 abcdefghijklmnopqrstuvwxyz0123456789",
	    E_NAN("abcdefghijklmnopqrstuvwxyz012345...")),
	ERR("add 1 \n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
	    E_NAN("????????????????????????????????...")),
};

static int	 passed, failed;

static void
show(const char *s, size_t len)
{
	size_t	 i;

	putchar('"');
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c >= 0x20 && c < 0x7f)
			putchar(c);
		else
			printf("\\x%02x", c);
	}
	putchar('"');
}

static void
check(const char *what, const char *in, size_t len, int rc, const char *want,
    int got_rc, const char *got)
{
	if (rc == got_rc && strcmp(want, got) == 0) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL %s ", what);
	show(in, len);
	printf(": expected %d ", rc);
	show(want, strlen(want));
	printf(", got %d ", got_rc);
	show(got, strlen(got));
	putchar('\n');
}

static void
expect(const char *what, bool ok)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL %s\n", what);
}

static void
test_table(void)
{
	char	 out[OUTSZ];
	size_t	 i;
	int	 rc;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct tcase *t = &cases[i];
		int want_rc = strncmp(t->want, "ERR ", 4) == 0 ? -1 : t->rc;

		memset(out, 'X', sizeof(out));
		rc = calc_eval(t->in, t->len, out, sizeof(out));
		check("case", t->in, t->len, want_rc, t->want, rc, out);
	}
}

/* The reply only depends on the first len bytes, not on a NUL after them. */
static void
test_len(void)
{
	char	 out[OUTSZ];
	int	 rc;

	rc = calc_eval("add 7 4 junk", 7, out, sizeof(out));
	check("prefix", "add 7 4 junk", 7, 0, "11", rc, out);
	rc = calc_eval("67000", 2, out, sizeof(out));
	check("prefix", "67000", 2, 0, "4489", rc, out);
	rc = calc_eval("add 7 4", 0, out, sizeof(out));
	check("prefix", "add 7 4", 0, -1, E_EMPTY, rc, out);
	rc = calc_eval(NULL, 0, out, sizeof(out));
	check("null line", "", 0, -1, E_EMPTY, rc, out);
}

/* Numbers up to CALC_NUMBER_MAX characters are read; longer are refused. */
static void
test_long_numbers(void)
{
	char	 in[600], out[OUTSZ];
	size_t	 n;
	int	 rc;

	/* 256 characters: 255 zeros then 7 */
	n = (size_t)snprintf(in, sizeof(in), "add 1 ");
	memset(in + n, '0', 255);
	n += 255;
	in[n++] = '7';
	in[n] = '\0';
	rc = calc_eval(in, n, out, sizeof(out));
	check("long int", in, n, 0, "8", rc, out);

	/* 0. then 253 zeros then 1: 256 characters, 1e-254 */
	n = (size_t)snprintf(in, sizeof(in), "mul 1 0.");
	memset(in + n, '0', 253);
	n += 253;
	in[n++] = '1';
	in[n] = '\0';
	rc = calc_eval(in, n, out, sizeof(out));
	check("long decimal", in, n, 0, "1e-254", rc, out);

	/* one more character is too many */
	n = (size_t)snprintf(in, sizeof(in), "add 1 ");
	memset(in + n, '0', 256);
	n += 256;
	in[n++] = '7';
	in[n] = '\0';
	rc = calc_eval(in, n, out, sizeof(out));
	check("too long", in, n, -1, "ERR number too long: "
	    "'00000000000000000000000000000000...' (at most 256 characters)",
	    rc, out);

	/* a bad number is "not a number" whatever its length */
	memset(in, 'z', sizeof(in) - 1);
	memcpy(in, "add 1 1", 7);
	in[sizeof(in) - 1] = '\0';
	rc = calc_eval(in, sizeof(in) - 1, out, sizeof(out));
	check("long bad", in, sizeof(in) - 1, -1,
	    E_NAN("1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz..."), rc, out);
}

/* A huge hostile line still gives a short reply. */
static void
test_huge_line(void)
{
	static char	 in[1 << 20];
	char		 out[OUTSZ];
	int		 rc;

	memset(in, 'A', sizeof(in));
	rc = calc_eval(in, sizeof(in), out, sizeof(out));
	check("huge", "AAAA...", 7, -1,
	    E_UNKNOWN("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA..."), rc, out);

	memset(in, ' ', sizeof(in));
	rc = calc_eval(in, sizeof(in), out, sizeof(out));
	check("huge blank", "    ...", 7, -1, E_EMPTY, rc, out);

	memset(in, ',', sizeof(in));
	rc = calc_eval(in, sizeof(in), out, sizeof(out));
	check("huge commas", ",,,,...", 7, -1, E_UNKNOWN(""), rc, out);
}

/* Every reply, however long it would be, is cut to fit and terminated. */
static void
test_small_out(void)
{
	char	 out[OUTSZ];
	int	 rc;

	memset(out, 'X', sizeof(out));
	rc = calc_eval("add 7 4", 7, out, 2);
	check("outsz 2", "add 7 4", 7, 0, "1", rc, out);
	expect("outsz 2 leaves the rest alone", out[2] == 'X');

	memset(out, 'X', sizeof(out));
	rc = calc_eval("pow", 3, out, 6);
	check("outsz 6", "pow", 3, -1, "ERR u", rc, out);
	expect("outsz 6 leaves the rest alone", out[6] == 'X');

	memset(out, 'X', sizeof(out));
	rc = calc_eval("pow", 3, out, 3);
	check("outsz 3", "pow", 3, -1, "ER", rc, out);

	memset(out, 'X', sizeof(out));
	rc = calc_eval("pow", 3, out, 1);
	check("outsz 1", "pow", 3, -1, "", rc, out);

	memset(out, 'X', sizeof(out));
	rc = calc_eval("add 7 4", 7, out, 0);
	expect("outsz 0 is refused", rc == -1);
	expect("outsz 0 writes nothing", out[0] == 'X');
	expect("no out is refused", calc_eval("1", 1, NULL, 0) == -1);
}

static uint64_t	 rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t
rng(void)
{
	/* xorshift64*: deterministic, so a failure can be reproduced */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Random int64s, biased towards the places where overflow lives. */
static int64_t
rng_int(void)
{
	static const int64_t edges[] = {
		0, 1, -1, 2, -2, INT64_MAX, INT64_MIN, INT64_MAX - 1,
		INT64_MIN + 1, 3037000499, -3037000499, 3037000500,
		-3037000500, INT64_MAX / 2, INT64_MIN / 2, (int64_t)1 << 32,
	};
	uint64_t r = rng();

	switch (r % 4) {
	case 0:
		return edges[(r >> 8) % (sizeof(edges) / sizeof(edges[0]))];
	case 1:
		/* below 2^63, so negating it is defined */
		return (int64_t)(rng() >> (1 + (r >> 8) % 63)) *
		    ((r >> 16) & 1 ? -1 : 1);
	case 2:
		return (int64_t)(rng() % 2000001) - 1000000;
	default:
		return (int64_t)rng();
	}
}

static void
fmt_i128(char *buf, size_t bufsz, __int128 v)
{
	char		 tmp[64];
	size_t		 n = 0, i = 0;
	unsigned __int128 u = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;

	do {
		tmp[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u != 0);
	if (v < 0)
		buf[i++] = '-';
	while (n > 0 && i + 1 < bufsz)
		buf[i++] = tmp[--n];
	buf[i] = '\0';
}

/* Integer results against 128-bit arithmetic: exact, or "ERR overflow". */
static void
test_against_int128(void)
{
	static const char *const names[] = { "add", "sub", "mul", "div", "square" };
	char		 in[128], out[OUTSZ], want[OUTSZ];
	int		 i, rc, bad = 0;

	for (i = 0; i < 200000; i++) {
		int	 op = (int)(rng() % 5);
		int64_t	 a = rng_int(), b = rng_int();
		__int128 r = 0;
		bool	 exact = true;
		size_t	 n;

		if (op == 4)
			n = (size_t)snprintf(in, sizeof(in), "%s %" PRId64,
			    names[op], a);
		else
			n = (size_t)snprintf(in, sizeof(in), "%s,%" PRId64
			    ", %" PRId64, names[op], a, b);
		switch (op) {
		case 0: r = (__int128)a + b; break;
		case 1: r = (__int128)a - b; break;
		case 2: r = (__int128)a * b; break;
		case 3:
			if (b == 0) {
				exact = false;
				break;
			}
			r = (__int128)a / b;
			exact = (__int128)a % b == 0;
			break;
		case 4: r = (__int128)a * a; break;
		}
		if (op == 3 && b == 0) {
			snprintf(want, sizeof(want), "%s", E_DIVZERO);
		} else if (!exact) {
			/*
			 * Not exact: a double with 15 significant digits,
			 * which may well look like an integer (2^63-1 / 2^32
			 * is 2147483648 to 15 digits).
			 */
			long double q = (long double)a / (long double)b;
			long double d;

			rc = calc_eval(in, n, out, sizeof(out));
			d = (strtold(out, NULL) - q) / q;
			if (rc != 0 || d > 1e-14L || d < -1e-14L) {
				if (bad++ < 10)
					check("int128", in, n, 0, "(decimal)",
					    rc, out);
				else
					failed++;
			} else
				passed++;
			continue;
		} else if (r > INT64_MAX || r < INT64_MIN)
			snprintf(want, sizeof(want), "%s", E_OVERFLOW);
		else
			fmt_i128(want, sizeof(want), r);
		rc = calc_eval(in, n, out, sizeof(out));
		if (rc == (want[0] == 'E' ? -1 : 0) && strcmp(out, want) == 0)
			passed++;
		else if (bad++ < 10)
			check("int128", in, n, want[0] == 'E' ? -1 : 0, want,
			    rc, out);
		else
			failed++;
	}
}

/* Random lines from a small alphabet: the reply is always a sound line. */
static void
test_random_lines(void)
{
	static const char alphabet[] = "0123456789 \t,.+-eExXaAdDsubmlivqrn\0\r\n\xff";
	char	 in[48], out[OUTSZ];
	int	 i, rc, bad = 0;

	for (i = 0; i < 200000; i++) {
		size_t	 n = rng() % sizeof(in), j, outlen;
		bool	 ok;

		for (j = 0; j < n; j++)
			in[j] = alphabet[rng() % (sizeof(alphabet) - 1)];
		memset(out, 'X', sizeof(out));
		rc = calc_eval(in, n, out, sizeof(out));
		outlen = strnlen(out, sizeof(out));
		ok = outlen < sizeof(out) && outlen > 0 &&
		    (rc == 0 || rc == -1) &&
		    (rc == -1) == (strncmp(out, "ERR ", 4) == 0) &&
		    strpbrk(out, "\r\n") == NULL;
		if (ok) {
			passed++;
			continue;
		}
		failed++;
		if (bad++ < 10) {
			printf("FAIL random ");
			show(in, n);
			printf(": got %d ", rc);
			show(out, outlen);
			putchar('\n');
		}
	}
}

int
main(void)
{
	test_table();
	test_len();
	test_long_numbers();
	test_huge_line();
	test_small_out();
	test_against_int128();
	test_random_lines();

	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
