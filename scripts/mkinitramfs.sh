#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the guest's initramfs: busybox, the real dmsetup and e2fsprogs with the
# libraries they link, util-linux blockdev, the kernel modules of the build,
# the guest test scripts and the project's static guest tools.
#
# usage: mkinitramfs.sh [--bench] [--perf] OUTPUT.cpio.gz
#
# --bench adds fio and the libraries it links (about 80 MB), for `make bench`;
# the test suite's initramfs stays without it, so that every boot stays quick.
# --perf adds the host's perf (Debian's linux-perf), for `make profile`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
bench=0
perf=0
while [ $# -gt 1 ]; do
	case $1 in
	--bench) bench=1 ;;
	--perf) perf=1 ;;
	*) break ;;
	esac
	shift
done
out=${1:?usage: mkinitramfs.sh [--bench] [--perf] OUTPUT.cpio.gz}

die() { echo "mkinitramfs: error: $*" >&2; exit 1; }
[ -d "$MODROOT/lib/modules" ] || die "no modules in $MODROOT: run scripts/build-kernel.sh first"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,mnt,run,etc,tests,root}

cp /bin/busybox "$root/bin/busybox"

# Dynamically linked programs and everything ldd says they need.
copy_with_libs() {
	local bin=$1 lib
	[ -x "$bin" ] || die "$bin is missing: run scripts/setup.sh"
	mkdir -p "$root$(dirname "$bin")"
	cp -L "$bin" "$root$bin"
	for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}
for bin in /usr/sbin/dmsetup /sbin/mke2fs /sbin/e2fsck /sbin/blockdev /usr/bin/cmp; do
	copy_with_libs "$bin"
done
ln -sf mke2fs "$root/sbin/mkfs.ext4"
if [ "$bench" = 1 ]; then
	copy_with_libs /usr/bin/fio
fi
if [ "$perf" = 1 ]; then
	copy_with_libs /usr/bin/perf
fi

# Kernel modules of this build.
cp -a "$MODROOT/lib/modules" "$root/lib/"

# Guest tests and static guest tools.
cp -a "$REPO/tools/testing/s-snap/guest/." "$root/tests/"
cp "$REPO/tools/testing/s-snap/transcript.txt" "$root/tests/"
if [ -d "$OUT/guest-bin" ]; then
	cp -a "$OUT/guest-bin/." "$root/usr/bin/"
fi
cp "$REPO/tools/testing/s-snap/init" "$root/init"
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
