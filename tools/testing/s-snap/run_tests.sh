#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Run every test: the userspace cargo tests, the VM tests and the harness's
# own self-tests, after making sure that everything is installed and built.
# Ends with one line "N passed, N failed" covering all of them; exits non-zero
# if anything failed.  Arguments are passed to vmtest.py (e.g. test names).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
mkdir -p "$OUT"
passed=0
failed=0

summary() {
	echo
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	exit
}

step() {
	echo "=== $*"
}

step "setup"
"$REPO/scripts/setup.sh" || { failed=$((failed + 1)); summary; }
# The tree's name comes from the version of linux-source-6.12, which a fresh
# machine only has now that setup installed it.
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
step "kernel build"
"$REPO/scripts/build-kernel.sh" >"$OUT/kernel-build.log" 2>&1 || { tail -n 30 "$OUT/kernel-build.log"; failed=$((failed + 1)); summary; }

# The checking kernel (S_SNAP_FLAVOR=debug) only adds the VM suite: lint and the
# userspace tests do not depend on the kernel.
if [ -n "$FLAVOR" ]; then
	:
elif step "lint (rustfmt, clippy, checkpatch, no unsafe in the driver, cargo fmt/clippy)" &&
	"$REPO/scripts/lint.sh"; then
	passed=$((passed + 1))
else
	failed=$((failed + 1))
fi

# Userspace: cargo's own per-binary "test result:" lines are summed.
if [ -z "$FLAVOR" ] && [ -f "$REPO/tools/s-snap/Cargo.toml" ]; then
	step "userspace tests (cargo test --release in tools/s-snap)"
	log="$OUT/cargo-test.log"
	(cd "$REPO/tools/s-snap" && cargo test --release --workspace --no-fail-fast 2>&1) | tee "$log"
	cargo_rc=${PIPESTATUS[0]}
	read -r p f < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log" |
		awk '{p += $1; f += $2} END {print p + 0, f + 0}')
	passed=$((passed + p))
	failed=$((failed + f))
	# A build failure or a crashed test binary prints no failed count.
	if [ "$cargo_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "cargo test failed (exit $cargo_rc) without a failed test count"
		failed=$((failed + 1))
	fi
fi

step "guest tools and initramfs"
"$REPO/scripts/build-guest-tools.sh" || { failed=$((failed + 1)); summary; }
"$REPO/scripts/mkinitramfs.sh" "$OUT/initramfs.cpio.gz" || { failed=$((failed + 1)); summary; }

# The checking kernel runs several times slower under TCG.
scale=1
[ "$FLAVOR" != debug ] || scale=4
vmtest() {
	python3 "$REPO/tools/testing/s-snap/vmtest.py" --kernel "$BZIMAGE" \
		--initrd "$OUT/initramfs.cpio.gz" --out "$OUT" --timeout-scale "$scale" "$@"
}

step "VM tests"
vmlog="$OUT/vmtest.log"
vmtest "$@" | tee "$vmlog"
p=$(grep -c '^vmtest: PASS ' "$vmlog")
f=$(grep -c '^vmtest: FAIL ' "$vmlog")
passed=$((passed + p))
failed=$((failed + f))
# Each KUnit test case (the Rust doc tests) that the kunit-doctests boot ran
# counts on its own, besides that VM test.
klog="$OUT/logs/kunit-doctests.boot1.console.log"
if grep -q '^vmtest: [A-Z]* kunit-doctests ' "$vmlog" && [ -f "$klog" ]; then
	kp=$(grep -c '^kunit: PASS ' "$klog")
	kf=$(grep -c '^kunit: FAIL ' "$klog")
	echo "KUnit: $kp test cases passed, $kf failed"
	passed=$((passed + kp))
	failed=$((failed + kf))
fi

# The harness must fail a run whose guest test fails, and one whose guest
# kernel warns.  Only when no test names were given (a full run).
if [ $# -eq 0 ]; then
	step "harness self-tests"
	for t in selftest-fail:"test exited with 3" selftest-warning:"kernel: .*WARNING"; do
		name=${t%%:*}
		reason=${t#*:}
		out=$(vmtest --log-dir "$OUT/selftest-logs" "$name" 2>&1)
		rc=$?
		if [ $rc -ne 0 ] && echo "$out" | grep -q "^vmtest: FAIL $name .*$reason"; then
			echo "harness: PASS $name makes the run fail ($reason)"
			passed=$((passed + 1))
		else
			echo "harness: FAIL $name did not make the run fail as expected (exit $rc):"
			echo "$out"
			failed=$((failed + 1))
		fi
	done
fi

summary
