# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: s-snap for an origin that is not loaded.
. /tests/lib
load_origin
msg snapshot create 1 || fail "create"
dmsetup remove work
n=$(blockdev --getsz /dev/vda)
expect_fail "s-snap without origin" dmsetup create snap1 --table "0 $n s-snap /dev/vda 1"
expect_log "No s-snap-origin target is loaded on this origin device"
