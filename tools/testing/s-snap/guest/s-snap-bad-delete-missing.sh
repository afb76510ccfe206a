# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: deleting an id that does not exist.
. /tests/lib
load_origin
msg snapshot create 1 || fail "create"
expect_fail "delete of 2" msg snapshot delete 2
expect_log "snapshot 2 does not exist"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "1 1" ] || fail "status: $(dmsetup status work)"
dmsetup remove work
