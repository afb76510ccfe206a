#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# vm: memory=8192 disks=2G,160G,256M timeout=1800
#
# Where the kernel spends its time in first writes after a snapshot (64 KiB
# chunks, RAM disks, 2,048 writes each at queue depths 1 and 16): s-snap
# profiled, dm-thin beside it for the rates. `make profile` runs it.
. /tests/bench-lib
. /tests/profile-lib
mkdir -p $R $R/logs $R/fio
# A 1 GiB origin, whatever bench-lib's sizes.
OSZ=$((1024 * 2048))
SNAP_SLICE=$((OSZ + (OSZ / CHUNK / 4096 + 4) * CHUNK))
STORE_SECTORS=$((4 * SNAP_SLICE + 4194304))
for t in thin s-snap; do
	kind_up ram
	target_up $t
	snap_create 1
	echo "first writes: $t queue depth 1"
	first_writes "$ORIGIN" 1 0
	echo "first writes: $t queue depth 16"
	first_writes "$ORIGIN" 16 128
	if [ $t = s-snap ]; then
		# Chunks no run has written yet: from 256 MiB on.
		for run in 1,256 16,384; do
			qd=${run%,*}
			profile "s-snap first writes, queue depth $qd" sh -c \
				". /tests/lib; . /tests/profile-lib; first_writes $ORIGIN $qd ${run#*,}"
		done
	fi
	dmsetup remove_all || fail "dmsetup remove_all"
done
echo "vmtest: PASS profile-first-writes"
