#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the static programs the guest tests run (the cargo workspace in
# tools/testing/s-snap/guest-tools) into $OUT/guest-bin for the initramfs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
mkdir -p "$OUT/guest-bin"
cd "$REPO/tools/testing/s-snap/guest-tools"
bins=$(cargo metadata --no-deps --format-version 1 |
	python3 -c 'import json,sys; print(" ".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))')
[ -n "$bins" ] || exit 0
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
	--target x86_64-unknown-linux-gnu $(printf -- '--bin %s ' $bins)
for b in $bins; do
	cp "target/x86_64-unknown-linux-gnu/release/$b" "$OUT/guest-bin/"
done
