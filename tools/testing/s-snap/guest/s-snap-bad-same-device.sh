# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: origin and COW the same device.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
expect_fail "origin = COW" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vda S 16"
expect_log "Origin and COW must be different devices"
