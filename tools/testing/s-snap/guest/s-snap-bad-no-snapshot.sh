# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: s-snap for an id that does not exist.
. /tests/lib
load_origin
msg snapshot create 1 || fail "create"
n=$(blockdev --getsz /dev/vda)
expect_fail "s-snap of snapshot 2" dmsetup create snap2 --table "0 $n s-snap /dev/vda 2"
expect_log "No snapshot with this id exists"
expect_fail "s-snap with id x" dmsetup create snapx --table "0 $n s-snap /dev/vda x"
expect_log "Invalid snapshot id"
snapshot_device 1
expect_fail "second s-snap of snapshot 1" dmsetup create snap1b --table "0 $n s-snap /dev/vda 1"
expect_log "The snapshot already has an active s-snap device"
dmsetup remove snap1
dmsetup remove work
