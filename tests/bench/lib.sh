# tests/bench/lib.sh - shared by tests/bench/compare-ws and tests/bench/fanout:
# free ports, starting and stopping servers by PID, memory and CPU of a
# process tree.  Source it after setting NAME (the script's name, for
# messages) and TMP (a temporary folder the caller removes).

die() { echo "$NAME: ERROR: $*" >&2; exit 1; }
note() { echo "$NAME: $*" >&2; }

declare -A PID=()
PORTS=()

stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}
# a process and all its descendants, from one snapshot of the process table
# (a thousand processes, one per connection, are listed in well under a second)
tree() {
	ps -e -o pid=,ppid= | awk -v roots="$*" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
		{ pp[$1] = $2; kids[$2] = kids[$2] " " $1 }
		END {
			for (i = 1; i <= n; i++) if (r[i] in pp) q[++t] = r[i]
			for (h = 1; h <= t; h++) {
				print q[h]
				m = split(kids[q[h]], k, " ")
				for (j = 1; j <= m; j++) if (!(k[j] in seen)) { seen[k[j]] = 1; q[++t] = k[j] }
			}
		}'
}
stop_server() {	# name: the server and every process under it
	local s=$1 pids p
	[ -n "${PID[$s]:-}" ] || return 0
	pids=$(tree "${PID[$s]}")
	stop_pid "${PID[$s]}"
	for p in $pids; do kill -0 "$p" 2>/dev/null && stop_pid "$p"; done
	wait "${PID[$s]}" 2>/dev/null || true
	unset "PID[$s]"
	return 0
}
stop_all() {
	local s
	for s in "${!PID[@]}"; do stop_server "$s"; done
}

free_port() {
	local p used
	used=$(ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u)
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		grep -qx "$p" <<< "$used" && continue
		[[ " ${PORTS[*]:-} " == *" $p "* ]] && continue
		PORTS+=("$p")
		echo "$p"; return 0
	done
	die "no free port found"
}

wait_port() {	# name pid port
	local i
	for i in $(seq 150); do
		kill -0 "$2" 2>/dev/null || { cat "$TMP/$1.log" >&2; die "$1 exited at start (log above)"; }
		if (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	die "$1 is not listening on port $3 after 15 s"
}

# apt_need PACKAGE COMMAND-OR-PATH: install the Debian package when missing
apt_need() {
	local pkg=$1 what=$2
	if [[ $what == /* ]]; then [ -e "$what" ] && return 0
	else command -v "$what" >/dev/null && return 0; fi
	note "$pkg is not installed; installing it with apt-get"
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >>"$TMP/apt.log" 2>&1 ||
	  { apt-get update -q >>"$TMP/apt.log" 2>&1 &&
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >>"$TMP/apt.log" 2>&1; }; } ||
		{ tail -n 20 "$TMP/apt.log" >&2; return 1; }
}

HZ=$(getconf CLK_TCK)
cpu_ticks() {	# utime + stime of process trees (threads included)
	local p files=()
	for p in $(tree "$@"); do files+=("/proc/$p/stat"); done
	[ ${#files[@]} -gt 0 ] || { echo 0; return; }
	cat "${files[@]}" 2>/dev/null | sed 's/^.*) //' | awk '{ s += $12 + $13 } END { print s + 0 }'
}
mem_kb() {	# "RSS PSS NPROC" summed over process trees, kB
	local p files=()
	for p in $(tree "$@"); do files+=("/proc/$p/status" "/proc/$p/smaps_rollup"); done
	[ ${#files[@]} -gt 0 ] || { echo "0 0 0"; return; }
	cat "${files[@]}" 2>/dev/null |
		awk '/^VmRSS:/ { r += $2; n++ } /^Pss:/ { s += $2 } END { printf "%d %d %d\n", r, s, n }'
}
kv() { sed -n 's/^SUMMARY //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
mib() { awk -v a="$1" 'BEGIN{printf "%.1f", a / 1024}'; }

# forkd's workers drop to an unprivileged user when it starts as root
forkd_user_lines() {
	if [ "$(id -u)" = 0 ]; then
		printf 'user = "nobody";\ngroup = "%s";\n' \
			"$(getent group nogroup >/dev/null && echo nogroup || echo nobody)"
	fi
}

# does this forkd take the configuration in file $1 (forkd -t)?
forkd_takes() { "$FORKD" -t -c "$1" >"$1.check" 2>&1; }

build_bench() {
	command -v gcc >/dev/null || die "gcc is needed"
	gcc -std=gnu11 -O2 -Wall -Wextra -pthread "$ROOT/src/forkd-bench.c" \
		-o "$TMP/forkd-bench" -lnettle -lm || die "cannot build forkd-bench (needs nettle-dev)"
	BENCH=$TMP/forkd-bench
}

machine_line() {
	echo "$NAME: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
}
