#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# vm: memory=14336 disks=2G,160G,256M timeout=1800
#
# Where the kernel spends its time while the background reclaim gives back
# the space of a deleted snapshot that holds 262,144 exceptions (8 KiB
# chunks, RAM disks). `make profile` runs it.
. /tests/bench-lib
. /tests/profile-lib
PROFILE_LINES=60
mkdir -p $R $R/logs $R/fio
k=262144
kind_up ram
modprobe dm_s_snap || fail "modprobe dm_s_snap"
msz=$((k * 16))
slice cow 0 $((2 * msz + 2097152))
echo "0 $msz s-snap-origin $ODEV /dev/mapper/cow S 16" | dmsetup create work ||
	fail "s-snap-origin"
dm message work 0 snapshot create 1
dd if=/dev/zero of=/dev/mapper/work bs=1M count=$((msz / 2048)) oflag=direct 2>/dev/null ||
	fail "fill"
# The reclaim ends with a device-mapper event: waiting for it, rather than
# polling `usage`, keeps dmsetup's start-ups out of the profile.
ev=$(dmsetup info -c --noheadings -o events work)
profile "s-snap delete and reclaim of $k exceptions" sh -c \
	"dmsetup message work 0 snapshot delete 1 && timeout 300 dmsetup wait work $ev"
[ "$(usage_field deleting_snapshots)" = 0 ] || fail "event before the space was back: $(msg usage)"
[ "$(usage_field data_chunks)" = 0 ] || fail "reclaim left data chunks: $(msg usage)"
echo "vmtest: PASS profile-reclaim"
