# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,16K
# Bad input: a COW device too small to hold an exception store.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
expect_fail "16 KiB COW" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 16"
expect_log "COW device is smaller than the exception store needs"
