# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: wrong argument counts are refused with a clear error.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
expect_fail "origin with 3 arguments" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S"
expect_fail "origin with 5 arguments" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 16 x"
expect_log "Invalid argument count: <origin dev> <COW dev> S <chunk size>"
expect_fail "snapshot with 1 argument" dmsetup create snap --table "0 $n s-snap /dev/vda"
expect_fail "snapshot with 3 arguments" dmsetup create snap --table "0 $n s-snap /dev/vda 1 2"
expect_log "Invalid argument count: <origin dev> <snapshot id>"
[ -z "$(dmsetup ls | grep -v 'No devices')" ] || fail "a device was left behind"
