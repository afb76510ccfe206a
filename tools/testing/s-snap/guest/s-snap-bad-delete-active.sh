# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: deleting a snapshot whose s-snap device is active.
. /tests/lib
load_origin
msg snapshot create 1 || fail "create"
snapshot_device 1
expect_fail "delete of active snapshot" msg snapshot delete 1
expect_log "snapshot 1 has an active s-snap device"
dmsetup remove snap1
msg snapshot delete 1 || fail "delete after remove"
dmsetup remove work
