/*
 * calc: integer arithmetic that is exact or refuses, decimals in double.
 *
 * A request is an operation and its operands, separated by commas and/or
 * runs of spaces and tabs: "add,7,4", "add 7 4", "ADD, 7, 4".  A lone number
 * is squared.  Integers are signed 64-bit and never wrap: a literal or a
 * result that does not fit is "ERR overflow (...)", never a wrong number.  As soon
 * as one operand is written with a decimal point or an exponent, the whole
 * operation is done in double and printed with at most 15 significant
 * digits, which is all a double can promise to round-trip.
 *
 * The request is bytes, not a C string: it may hold NULs or anything else,
 * and only len bounds it.  Bytes of the request are echoed back only inside
 * an error, truncated and with anything unprintable replaced, so a hostile
 * line can neither make a long reply nor smuggle a line break into it.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calc.h"

#define CALC_QUOTE_MAX		32	/* bytes of a bad token echoed back */
#define CALC_NUMBER_MAX		256	/* longest number accepted, in characters */
#define CALC_MAX_OPERANDS	2

struct token {
	const char	*p;
	size_t		 n;
};

enum calc_op { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_SQUARE };

struct calc_opdef {
	const char	*name;
	enum calc_op	 op;
	size_t		 operands;
};

static const struct calc_opdef calc_ops[] = {
	{ "add",	OP_ADD,		2 },
	{ "sub",	OP_SUB,		2 },
	{ "mul",	OP_MUL,		2 },
	{ "div",	OP_DIV,		2 },
	{ "square",	OP_SQUARE,	1 },
};

/* A bare number means this one. */
static const struct calc_opdef *const calc_bare = &calc_ops[4];

enum num_kind { NUM_BAD, NUM_INT, NUM_DEC };

/* Every error says what was wrong and what is accepted. */
#define E_INT_OVERFLOW	"overflow (integers must stay within " \
			"-9223372036854775808..9223372036854775807)"
#define E_DEC_OVERFLOW	"overflow (decimals must stay within about -1.8e308..1.8e308)"
#define E_DIV_ZERO	"division by zero (the divisor must not be 0)"
#define E_NOT_NUMBER	"not a number: '%s' (expected e.g. 7, -3 or 2.5)"

static int	 reply_err(char *, size_t, const char *, ...)
		    __attribute__((format(printf, 3, 4)));

static int
reply_err(char *out, size_t outsz, const char *fmt, ...)
{
	va_list	 ap;
	int	 n;

	n = snprintf(out, outsz, "ERR ");
	if (n >= 0 && (size_t)n < outsz) {
		va_start(ap, fmt);
		vsnprintf(out + n, outsz - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static char
ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool
token_is(const struct token *t, const char *word)
{
	size_t	 i;

	if (t->n != strlen(word))
		return false;
	for (i = 0; i < t->n; i++)
		if (ascii_lower(t->p[i]) != word[i])
			return false;
	return true;
}

/*
 * Render a token for an error line: at most CALC_QUOTE_MAX bytes, then "..."
 * if there was more; anything outside printable ASCII becomes '?'.
 */
static const char *
quote(const struct token *t, char *buf, size_t bufsz)
{
	size_t	 i, n;

	n = t->n > CALC_QUOTE_MAX ? CALC_QUOTE_MAX : t->n;
	if (n > bufsz - 4)
		n = bufsz - 4;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)t->p[i];

		buf[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (n < t->n) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

/*
 * Split at commas and/or runs of blanks, leading and trailing blanks
 * ignored.  Two commas with only blanks between them enclose an empty token,
 * which is kept so that "add,,2" is refused rather than read as "add 2".
 * Stops after max tokens: the caller only needs to know "too many".
 */
static size_t
tokenize(const char *p, size_t n, struct token *tok, size_t max)
{
	size_t	 i = 0, count = 0, start;

	while (n > 0 && is_blank(p[n - 1]))
		n--;
	while (i < n && is_blank(p[i]))
		i++;
	if (i == n)
		return 0;
	for (;;) {
		start = i;
		while (i < n && !is_blank(p[i]) && p[i] != ',')
			i++;
		tok[count].p = p + start;
		tok[count].n = i - start;
		if (++count == max || i == n)
			return count;
		while (i < n && is_blank(p[i]))
			i++;
		if (i < n && p[i] == ',') {
			i++;
			while (i < n && is_blank(p[i]))
				i++;
		}
	}
}

static const struct calc_opdef *
find_op(const struct token *t)
{
	size_t	 i;

	for (i = 0; i < sizeof(calc_ops) / sizeof(calc_ops[0]); i++)
		if (token_is(t, calc_ops[i].name))
			return &calc_ops[i];
	return NULL;
}

/*
 * Whether a first token was meant as a number (a lone number is squared),
 * so that "1x" or "nan" is answered "not a number" and not "unknown
 * operation".
 */
static bool
looks_numeric(const struct token *t)
{
	char	 c;

	if (t->n == 0)
		return false;
	c = t->p[0];
	return is_digit(c) || c == '+' || c == '-' || c == '.' ||
	    token_is(t, "nan") || token_is(t, "inf") || token_is(t, "infinity");
}

/*
 * The only numbers: [+-]digits[.digits][e[+-]digits], or .digits in place of
 * the mantissa.  Decimal ASCII digits only: no hex, no nan/inf, no second
 * sign, no digit grouping.
 */
static enum num_kind
classify(const struct token *t)
{
	const char	*p = t->p;
	size_t		 i = 0, n = t->n, digits = 0, edigits = 0;
	bool		 dec = false;

	if (i < n && (p[i] == '+' || p[i] == '-'))
		i++;
	for (; i < n && is_digit(p[i]); i++)
		digits++;
	if (i < n && p[i] == '.') {
		dec = true;
		for (i++; i < n && is_digit(p[i]); i++)
			digits++;
	}
	if (digits == 0)
		return NUM_BAD;
	if (i < n && (p[i] == 'e' || p[i] == 'E')) {
		dec = true;
		i++;
		if (i < n && (p[i] == '+' || p[i] == '-'))
			i++;
		for (; i < n && is_digit(p[i]); i++)
			edigits++;
		if (edigits == 0)
			return NUM_BAD;
	}
	if (i != n)
		return NUM_BAD;
	return dec ? NUM_DEC : NUM_INT;
}

/* An integer literal already checked by classify(); -1 if it overflows. */
static int
parse_int(const struct token *t, int64_t *v)
{
	size_t	 i = 0;
	bool	 neg = false;
	int64_t	 r = 0;

	if (t->p[0] == '+' || t->p[0] == '-') {
		neg = t->p[0] == '-';
		i++;
	}
	/* accumulate towards the sign so INT64_MIN itself parses */
	for (; i < t->n; i++) {
		int d = t->p[i] - '0';

		if (__builtin_mul_overflow(r, 10, &r))
			return -1;
		if (neg ? __builtin_sub_overflow(r, d, &r) :
		    __builtin_add_overflow(r, d, &r))
			return -1;
	}
	*v = r;
	return 0;
}

/*
 * A number already checked by classify() and no longer than CALC_NUMBER_MAX,
 * as a double.  -1 when it is too large for a double: "1e999" is reported as
 * an overflow, not as "not a number", because it is a well-formed number.
 * Underflow ("1e-999") quietly becomes 0 or a denormal, the nearest double.
 * -2 if strtod() disagrees with classify() about where the number ends, which
 * would only happen under a locale whose decimal point is not '.'.
 */
static int
parse_double(const struct token *t, double *v)
{
	char	 buf[CALC_NUMBER_MAX + 1], *end;
	double	 d;

	memcpy(buf, t->p, t->n);
	buf[t->n] = '\0';
	d = strtod(buf, &end);
	if (end != buf + t->n)
		return -2;
	if (!isfinite(d))
		return -1;
	*v = d;
	return 0;
}

static int
reply_int(char *out, size_t outsz, int64_t v)
{
	snprintf(out, outsz, "%" PRId64, v);
	return 0;
}

static int
reply_double(char *out, size_t outsz, double v)
{
	if (!isfinite(v))
		return reply_err(out, outsz, E_DEC_OVERFLOW);
	if (v == 0)
		v = 0;		/* no "-0" */
	snprintf(out, outsz, "%.15g", v);
	return 0;
}

static int
eval_int(const struct calc_opdef *op, const int64_t *a, char *out,
    size_t outsz)
{
	int64_t	 r = 0;
	bool	 ovf = false;

	switch (op->op) {
	case OP_ADD:
		ovf = __builtin_add_overflow(a[0], a[1], &r);
		break;
	case OP_SUB:
		ovf = __builtin_sub_overflow(a[0], a[1], &r);
		break;
	case OP_MUL:
		ovf = __builtin_mul_overflow(a[0], a[1], &r);
		break;
	case OP_SQUARE:
		ovf = __builtin_mul_overflow(a[0], a[0], &r);
		break;
	case OP_DIV:
		if (a[1] == 0)
			return reply_err(out, outsz, E_DIV_ZERO);
		if (a[0] == INT64_MIN && a[1] == -1)
			return reply_err(out, outsz, E_INT_OVERFLOW);
		if (a[0] % a[1] != 0)
			/* long double keeps all 64 bits on x86 */
			return reply_double(out, outsz,
			    (double)((long double)a[0] / (long double)a[1]));
		r = a[0] / a[1];
		break;
	}
	if (ovf)
		return reply_err(out, outsz, E_INT_OVERFLOW);
	return reply_int(out, outsz, r);
}

static int
eval_double(const struct calc_opdef *op, const double *a, char *out,
    size_t outsz)
{
	double	 r = 0;

	switch (op->op) {
	case OP_ADD:
		r = a[0] + a[1];
		break;
	case OP_SUB:
		r = a[0] - a[1];
		break;
	case OP_MUL:
		r = a[0] * a[1];
		break;
	case OP_SQUARE:
		r = a[0] * a[0];
		break;
	case OP_DIV:
		if (a[1] == 0)
			return reply_err(out, outsz, E_DIV_ZERO);
		r = a[0] / a[1];
		break;
	}
	return reply_double(out, outsz, r);
}

int
calc_eval(const char *line, size_t len, char *out, size_t outsz)
{
	struct token	 tok[1 + CALC_MAX_OPERANDS + 1], *args;
	const struct calc_opdef *op;
	char		 q[CALC_QUOTE_MAX + 4];
	size_t		 ntok, nargs, i;
	bool		 dec = false;
	int64_t		 iv[CALC_MAX_OPERANDS];
	double		 dv[CALC_MAX_OPERANDS];

	if (out == NULL || outsz == 0)
		return -1;
	if (line == NULL)
		len = 0;

	ntok = tokenize(line, len, tok, sizeof(tok) / sizeof(tok[0]));
	if (ntok == 0)
		return reply_err(out, outsz, "empty request (try: add 7 4)");

	if ((op = find_op(&tok[0])) != NULL) {
		args = &tok[1];
		nargs = ntok - 1;
		if (nargs != op->operands)
			return reply_err(out, outsz, "%s needs %zu number%s "
			    "(e.g. %s %s)", op->name, op->operands,
			    op->operands == 1 ? "" : "s", op->name,
			    op->operands == 1 ? "67" : "7 4");
	} else if (looks_numeric(&tok[0])) {
		if (ntok > 1)
			return reply_err(out, outsz, "missing operation "
			    "(try: add 7 4; a lone number is squared)");
		op = calc_bare;
		args = &tok[0];
		nargs = 1;
	} else
		return reply_err(out, outsz, "unknown operation '%s' "
		    "(use add, sub, mul, div, square or a number)",
		    quote(&tok[0], q, sizeof(q)));

	/* every operand well-formed before any is judged too large */
	for (i = 0; i < nargs; i++) {
		switch (classify(&args[i])) {
		case NUM_BAD:
			return reply_err(out, outsz, E_NOT_NUMBER,
			    quote(&args[i], q, sizeof(q)));
		case NUM_DEC:
			dec = true;
			break;
		case NUM_INT:
			break;
		}
		if (args[i].n > CALC_NUMBER_MAX)
			return reply_err(out, outsz, "number too long: '%s' "
			    "(at most %d characters)",
			    quote(&args[i], q, sizeof(q)), CALC_NUMBER_MAX);
	}

	if (dec) {
		for (i = 0; i < nargs; i++) {
			switch (parse_double(&args[i], &dv[i])) {
			case -1:
				return reply_err(out, outsz, E_DEC_OVERFLOW);
			case -2:
				return reply_err(out, outsz,
				    E_NOT_NUMBER,
				    quote(&args[i], q, sizeof(q)));
			}
		}
		return eval_double(op, dv, out, outsz);
	}
	for (i = 0; i < nargs; i++)
		if (parse_int(&args[i], &iv[i]) == -1)
			return reply_err(out, outsz, E_INT_OVERFLOW);
	return eval_int(op, iv, out, outsz);
}
