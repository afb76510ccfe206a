# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: creating an id that exists.
. /tests/lib
load_origin
msg snapshot create 3 || fail "create"
expect_fail "duplicate id 3" msg snapshot create 3
expect_log "snapshot 3 already exists"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "1 3" ] || fail "status: $(dmsetup status work)"
dmsetup remove work
