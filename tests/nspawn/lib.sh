# Shared by tests/nspawn/run and tests/nspawn/piuparts (sourced, not run).
#
# Builds the forkd package from the source tree and keeps a cached Debian
# bookworm root to install it into. Needs root, debootstrap and a Debian
# mirror (the one the host's apt uses).

FORKD_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FORKD_CACHE=${FORKD_CACHE:-/var/cache/forkd-tests}
FORKD_SUITE=bookworm

skip() {
	echo "SKIP: $*"
	exit 77
}

note() {
	echo "# $*"
}

need_root_and() {
	[ "$(id -u)" -eq 0 ] || skip "must run as root (builds roots and boots containers)"
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null 2>&1 ||
			skip "$tool not found (apt-get install the package that has it)"
	done
}

# The Debian mirror the host's apt uses for $FORKD_SUITE (deb822 or
# one-line sources); nothing when apt names none.
debian_mirror() {
	local m
	m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$FORKD_SUITE" '
		/^$/ { if (u != "" && suites ~ ("(^| )" s "( |$)")) { print u; exit } u = ""; suites = ""; next }
		/^URIs:/ { u = $2 }
		/^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
		END { if (u != "" && suites ~ ("(^| )" s "( |$)")) print u }' | head -n 1)
	if [ -z "$m" ]; then
		m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			awk -v s="$FORKD_SUITE" '$1 == "deb" && $3 == s { print $2; exit }' |
			sed 's/^\[[^]]*\][ \t]*//')
	fi
	echo "$m"
}

# Copy the source tree (tracked and untracked files, without what
# .gitignore names and without out-of-tree build directories build*/) to
# $1, so a build never touches the tree itself.
copy_tree() {
	local dest=$1
	mkdir -p "$dest"
	if git -C "$FORKD_TOP" rev-parse --git-dir >/dev/null 2>&1; then
		(cd "$FORKD_TOP" && git ls-files -z -c -o --exclude-standard |
			grep -zv '^build[^/]*/' |
			xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
			tar --null -T - -cf -) | tar -C "$dest" -xf -
	else
		(cd "$FORKD_TOP" && tar --exclude='./build*' --exclude=./.git \
			--exclude=./debian/.debhelper --exclude=./debian/forkd -cf - .) |
			tar -C "$dest" -xf -
	fi
}

# Build forkd_*.deb from a copy of the tree in $1/src; print the .deb's path.
# FORKD_DEB=path uses an existing package instead. The build log is
# $1/build.log.
build_deb() {
	local work=$1 deb
	if [ -n "${FORKD_DEB:-}" ]; then
		[ -f "$FORKD_DEB" ] || { echo "FORKD_DEB=$FORKD_DEB: no such file" >&2; return 1; }
		readlink -f "$FORKD_DEB"
		return 0
	fi
	copy_tree "$work/src" || return 1
	(
		cd "$work/src" || exit 1
		export DEBIAN_FRONTEND=noninteractive
		if ! timeout 600 apt-get build-dep -y ./; then
			timeout 300 apt-get update &&
				timeout 600 apt-get build-dep -y ./ || exit 1
		fi
		timeout 1200 dpkg-buildpackage -us -uc -b
	) >"$work/build.log" 2>&1 || {
		tail -n 40 "$work/build.log" >&2
		return 1
	}
	deb=$(ls "$work"/forkd_*.deb 2>/dev/null | grep -v dbgsym | head -n 1)
	[ -n "$deb" ] || { echo "no forkd_*.deb produced" >&2; return 1; }
	echo "$deb"
}

# Path of a cached tarball of a minimal bookworm root with systemd, made
# with debootstrap the first time.
base_tarball() {
	local tarball="$FORKD_CACHE/$FORKD_SUITE-minbase-systemd.tar.gz"
	local dir mirror
	if [ -s "$tarball" ]; then
		echo "$tarball"
		return 0
	fi
	mkdir -p "$FORKD_CACHE"
	dir=$(mktemp -d "$FORKD_CACHE/root.XXXXXX") || return 1
	mirror=$(debian_mirror)
	if [ -z "$mirror" ]; then
		echo "no Debian mirror for $FORKD_SUITE in apt's sources" \
			"(/etc/apt/sources.list, /etc/apt/sources.list.d/): add one, e.g." \
			"'deb URL $FORKD_SUITE main', so the test root can be made" >&2
		rmdir "$dir"
		return 1
	fi
	note "debootstrap $FORKD_SUITE from $mirror (cached in $tarball)" >&2
	if ! timeout 900 debootstrap --variant=minbase \
		--include=systemd,systemd-sysv,dbus,procps \
		"$FORKD_SUITE" "$dir" "$mirror" >"$FORKD_CACHE/debootstrap.log" 2>&1; then
		tail -n 20 "$FORKD_CACHE/debootstrap.log" >&2
		rm -rf "$dir"
		return 1
	fi
	# Start every root from an empty apt cache and no machine identity.
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*_*
	: >"$dir/etc/machine-id"
	chmod 0755 "$dir"	# mktemp made it 0700: the root's / must be 0755
	tar -C "$dir" --numeric-owner -czf "$tarball.tmp" . &&
		mv "$tarball.tmp" "$tarball"
	rm -rf "$dir"
	[ -s "$tarball" ] && echo "$tarball"
}
