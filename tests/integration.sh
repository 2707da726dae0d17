#!/bin/sh
# Runs the integration tests (they start the real forkd binary) with pytest.
# Debian's python3-pytest is used through /usr/bin/python3 on purpose: a
# python3 earlier in PATH may not see Debian's modules.
set -u
: "${FORKD_SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${FORKD_BIN:=$FORKD_SRCDIR/src/forkd}"
export FORKD_BIN FORKD_SRCDIR
if ! /usr/bin/python3 -c 'import pytest' 2>/dev/null; then
	echo "FAIL: /usr/bin/python3 has no pytest (apt-get install python3-pytest)" >&2
	exit 99
fi
cd "$FORKD_SRCDIR/tests/integration" || exit 99
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -ra ${PYTEST_ARGS:-} .
