#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the static programs the guest tests run (the cargo workspace in
# tools/testing/s-snap/guest-tools, and s-snap-tool from tools/s-snap to check
# a COW device in the guest) into $OUT/guest-bin for the initramfs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
mkdir -p "$OUT/guest-bin"
cd "$REPO/tools/testing/s-snap/guest-tools"
bins=$(cargo metadata --no-deps --format-version 1 |
	python3 -c 'import json,sys; print(" ".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))')
if [ -n "$bins" ]; then
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
		--target x86_64-unknown-linux-gnu $(printf -- '--bin %s ' $bins)
	for b in $bins; do
		cp "target/x86_64-unknown-linux-gnu/release/$b" "$OUT/guest-bin/"
	done
fi

# The release profile of tools/s-snap keeps debug info (11 MB); the guest copy
# is stripped to keep the initramfs small.
cd "$REPO/tools/s-snap"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
	--target x86_64-unknown-linux-gnu --bin s-snap-tool
strip -o "$OUT/guest-bin/s-snap-tool" target/x86_64-unknown-linux-gnu/release/s-snap-tool
