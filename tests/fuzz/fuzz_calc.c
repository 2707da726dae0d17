/*
 * libFuzzer harness for calc_eval(): any bytes in, and the reply must be a
 * sound line: a return of 0 or -1, "ERR " exactly when -1, NUL-terminated
 * inside the buffer, never empty, and no line break that would let a client
 * forge a second reply line.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       tests/fuzz/fuzz_calc.c src/calc.c -o fuzz_calc
 *   ./fuzz_calc -max_total_time=60 CORPUS_COPY tests/fuzz/corpus/calc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "calc.h"

int	 LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void
check_reply(const char *in, size_t len, size_t outsz)
{
	char	 out[CALC_MIN_OUT + 1], again[CALC_MIN_OUT + 1];
	size_t	 n;
	int	 rc;

	/* a guard byte past outsz catches a write beyond the limit */
	memset(out, 0x5a, sizeof(out));
	rc = calc_eval(in, len, out, outsz);
	if (rc != 0 && rc != -1)
		abort();
	if (out[outsz] != 0x5a)
		abort();
	n = strnlen(out, outsz);
	if (n == outsz)
		abort();		/* not terminated */
	if (memchr(out, '\r', n) != NULL || memchr(out, '\n', n) != NULL)
		abort();
	if (outsz < CALC_MIN_OUT)
		return;
	/* a full-size buffer holds the whole reply */
	if (n == 0 || n >= CALC_MIN_OUT - 1)
		abort();
	if ((rc == -1) != (strncmp(out, "ERR ", 4) == 0))
		abort();
	/* pure: the same request gives the same reply */
	if (calc_eval(in, len, again, outsz) != rc || strcmp(out, again) != 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*in;

	/*
	 * An exact-size copy: ASan then catches any read past len, which the
	 * fuzzer's own buffer might hide.
	 */
	in = malloc(size ? size : 1);
	if (in == NULL)
		return 0;
	if (size > 0)
		memcpy(in, data, size);
	check_reply(in, size, CALC_MIN_OUT);
	/* and a short buffer, to exercise every truncation */
	check_reply(in, size, 1 + size % 16);
	free(in);
	return 0;
}
