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

## bench: first writes, rewrites, reads, ext4 and management at scale for
## s-snap, dm-snapshot, dm-thin and linear, on RAM disks and on disks whose
## flushes cost time, in the VM with fio; writes bench-results/ (over an hour)
.PHONY: bench bench-smoke bench-initramfs
bench: bench-initramfs
	python3 tools/testing/s-snap/bench/run.py --out $(OUT) \
		--kernel "$$(bash -c '. scripts/env.sh; echo $$BZIMAGE')" \
		--initrd $(OUT)/bench-initramfs.cpio.gz

## bench-smoke: the same with tiny sizes, to check that it works (5 minutes)
bench-smoke: bench-initramfs
	python3 tools/testing/s-snap/bench/run.py --smoke --out $(OUT) \
		--results $(OUT)/bench-smoke-results \
		--kernel "$$(bash -c '. scripts/env.sh; echo $$BZIMAGE')" \
		--initrd $(OUT)/bench-initramfs.cpio.gz

## profile: where the kernel spends its time in s-snap's first writes and in
## its background reclaim, as perf's flat profiles by symbol (perf in the VM,
## cpu-clock); prints them (about 10 minutes)
.PHONY: profile
profile: kernel
	scripts/build-guest-tools.sh
	scripts/mkinitramfs.sh --bench --perf $(OUT)/profile-initramfs.cpio.gz
	python3 tools/testing/s-snap/vmtest.py --out $(OUT)/profile \
		--kernel "$$(bash -c '. scripts/env.sh; echo $$BZIMAGE')" \
		--initrd $(OUT)/profile-initramfs.cpio.gz profile-first-writes profile-reclaim
	grep -a -h -E '^(first writes|profile): |IOPS=|^ +[0-9.]+%' \
		$(OUT)/profile/logs/profile-*.boot1.console.log

bench-initramfs: kernel
	scripts/build-guest-tools.sh
	scripts/mkinitramfs.sh --bench $(OUT)/bench-initramfs.cpio.gz

## man: manual pages into $(OUT)/man: s-snap-tool(1) and one page per
## subcommand (from its clap definition) and dm-s-snap(7) (rendered from
## shared-snapshot.rst; needs rst2man, python3-docutils); read one with
## man -l out/man/s-snap-tool.1
.PHONY: man
man:
	cd tools/s-snap && cargo run --quiet --release -p s-snap-tool \
		--bin s-snap-tool-man -- $(OUT)/man \
		--date "$$(git log -1 --format=%cs -- tool/src 2>/dev/null)"
	scripts/mkman.sh $(OUT)/man/dm-s-snap.7

## rustdoc: the Rust documentation of the kernel crate, the new modules
## included (the kernel's make rustdoc), into $(OUT)/rustdoc; fails on any
## rustdoc warning; open out/rustdoc/kernel/index.html
.PHONY: rustdoc
rustdoc: kernel
	scripts/rustdoc.sh

## patches: the kernel work as a patch series for Linux 6.12 (patches/series)
## with a cover letter, into $(OUT)/patches, for git am
.PHONY: patches patches-check
patches: setup
	python3 scripts/patches.py write

## patches-check: apply that series to a fresh 6.12 tree, build the kernel and
## run checkpatch.pl --strict at every patch, and replay the posting's
## transcript on the result (a tree of its own: the first run builds a whole
## kernel); ends with "N passed, N failed"
patches-check: setup
	python3 scripts/patches.py check

setup:
	scripts/setup.sh

kernel: setup
	scripts/build-kernel.sh >/dev/null

initramfs: kernel
	scripts/build-guest-tools.sh
	scripts/mkinitramfs.sh $(OUT)/initramfs.cpio.gz

clean:
	rm -rf $(OUT)
