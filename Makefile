# SPDX-License-Identifier: GPL-2.0
#
# Entry points.  The kernel itself is built by scripts/build-kernel.sh in a
# cache directory outside this repository (see README.md).

OUT ?= $(CURDIR)/out
export S_SNAP_OUT := $(OUT)

.PHONY: demo check check-debug setup kernel initramfs clean

## demo: install, build, boot a VM and replay the posting's dmsetup session
demo: initramfs
	python3 tools/testing/s-snap/vmtest.py --show --out $(OUT) \
		--kernel "$$(bash -c '. scripts/env.sh; echo $$BZIMAGE')" \
		--initrd $(OUT)/initramfs.cpio.gz demo-transcript

## check: run every test (cargo and VM); ends with "N passed, N failed"
check:
	tools/testing/s-snap/run_tests.sh

## check-debug: the same on the checking kernel (KASAN, lockdep, kmemleak, Rust
## debug assertions), built in a tree of its own
check-debug:
	S_SNAP_FLAVOR=debug S_SNAP_OUT=$(OUT)/debug tools/testing/s-snap/run_tests.sh

## bench: benchmark origin writes with 0..64 snapshots (s-snap, dm-snapshot,
## dm-thin, linear) in the VM; writes bench-results/ (about 10 minutes)
.PHONY: bench
bench: initramfs
	python3 tools/testing/s-snap/bench/run.py --out $(OUT) \
		--kernel "$$(bash -c '. scripts/env.sh; echo $$BZIMAGE')" \
		--initrd $(OUT)/initramfs.cpio.gz

setup:
	scripts/setup.sh

kernel: setup
	scripts/build-kernel.sh >/dev/null

initramfs: kernel
	scripts/build-guest-tools.sh
	scripts/mkinitramfs.sh $(OUT)/initramfs.cpio.gz

clean:
	rm -rf $(OUT)
