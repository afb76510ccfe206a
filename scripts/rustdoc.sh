#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the Rust documentation of the kernel crate with the kernel's own
# `make rustdoc` target, in the kernel cache tree that scripts/build-kernel.sh
# built, and copy it to $OUT/rustdoc (out/rustdoc/kernel/index.html; the new
# modules are kernel::device_mapper (with ::bufio, ::kcopyd, ::events),
# kernel::block::bio and kernel::crc32c).  Fails on any rustdoc warning.
#
# usage: scripts/rustdoc.sh          (after make kernel)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
[ -f "$KTREE/.config" ] || { echo "rustdoc: no kernel tree at $KTREE: run make kernel first" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! make -C "$KTREE" -s -j"$(nproc)" LLVM=-19 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
	BINDGEN="$BINDGEN" rustdoc >"$log" 2>&1; then
	tail -n 30 "$log" >&2
	echo "rustdoc: make rustdoc failed" >&2
	exit 1
fi
if grep -E "^(warning|error)" "$log" >/dev/null; then
	grep -E "^(warning|error)" -A 8 "$log" | head -60 >&2
	echo "rustdoc: warnings above" >&2
	exit 1
fi
rm -rf "$OUT/rustdoc"
mkdir -p "$OUT"
cp -r "$KTREE/Documentation/output/rust/rustdoc" "$OUT/rustdoc"
echo "rustdoc: $OUT/rustdoc/kernel/index.html"
