#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Lint what this repository adds to the kernel and the userspace crates:
# - rustfmt (the kernel's rustfmtcheck) on the whole tree;
# - clippy (CLIPPY=1, with Debian's clippy that matches /usr/bin/rustc) on the
#   kernel crate, the driver and the samples: no warning allowed;
# - checkpatch.pl on the C helpers this repository adds;
# - no `unsafe` in the driver (it must use the safe kernel-crate API only);
# - patches/series adds every kernel file of this repository;
# - bindgen's layouts of the C structs the Rust abstractions read agree with
#   the C compiler's (scripts/check_layouts.py);
# - cargo fmt --check and cargo clippy -D warnings on the userspace crates.
# Needs a built tree (scripts/build-kernel.sh). Prints "lint: PASS" or the
# problems and "lint: FAIL", and exits accordingly.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
KMAKE=(make -C "$KTREE" -s -j"$(nproc)" LLVM=-19 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc BINDGEN="$BINDGEN")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
problems=0
problem() {
	echo "lint: $*"
	problems=$((problems + 1))
}

if ! "${KMAKE[@]}" rustfmtcheck >"$log" 2>&1 || grep -q "^Diff in" "$log"; then
	grep "^Diff in" "$log" | sort -u | head -20
	problem "rustfmt: the files above are not formatted (make -C \$KTREE rustfmt)"
fi

# Recompile every Rust object this repository adds or changes, under clippy.
touch "$KTREE/rust/kernel/lib.rs"
(cd "$REPO" && git ls-files 'drivers/*.rs' 'samples/*.rs') | while IFS= read -r f; do
	touch "$KTREE/$f"
done
if ! "${KMAKE[@]}" CLIPPY=1 CLIPPY_DRIVER=/usr/bin/clippy-driver bzImage modules >"$log" 2>&1 ||
	grep -qE "^(warning|error)" "$log"; then
	grep -E "^(warning|error)" -A 6 "$log" | head -60
	problem "clippy: warnings or errors above"
fi

for f in $(cd "$REPO" && git ls-files 'rust/helpers/*.c'); do
	if ! "$KTREE/scripts/checkpatch.pl" --no-tree --terse --quiet -f "$REPO/$f"; then
		problem "checkpatch: $f"
	fi
done

if grep -rnw --include='*.rs' unsafe "$REPO/drivers" | grep -v ':[0-9]*:\s*//'; then
	problem "the driver uses unsafe code"
fi

# Every kernel file of this repository is in the patch series (make patches).
python3 "$REPO/scripts/patches.py" lint || problem "patches/series does not cover the kernel files"
python3 "$REPO/scripts/check_layouts.py" "$KTREE" || problem "bindgen's struct layouts differ from the compiler's"

# The kernel crate's Rust documentation builds without a rustdoc warning.
if ! "$REPO/scripts/rustdoc.sh" >"$log" 2>&1; then
	tail -n 20 "$log"
	problem "rustdoc: make rustdoc warns or fails"
fi

# The documentation renders as dm-s-snap(7) without a single rst2man warning.
if ! "$REPO/scripts/mkman.sh" "$log.7" >"$log" 2>&1; then
	head -20 "$log"
	problem "rst2man: Documentation/admin-guide/device-mapper/shared-snapshot.rst"
fi
rm -f "$log.7"

for ws in tools/s-snap tools/testing/s-snap/guest-tools; do
	(cd "$REPO/$ws" && cargo fmt --check >"$log" 2>&1) || { head -20 "$log"; problem "cargo fmt: $ws"; }
	(cd "$REPO/$ws" && cargo clippy --quiet --all-targets -- -D warnings >"$log" 2>&1) ||
		{ head -30 "$log"; problem "cargo clippy: $ws"; }
done

if [ $problems -eq 0 ]; then
	echo "lint: PASS"
else
	echo "lint: FAIL ($problems problems)"
	exit 1
fi
