# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: unknown messages and non-numeric ids.
. /tests/lib
load_origin
expect_fail "unknown message" msg snapshot rename 1
expect_fail "empty snapshot message" msg snapshot
expect_fail "unknown word" msg frobnicate
expect_fail "policy message without a value" msg cow_full_policy
expect_fail "policy message with two values" msg cow_full_policy drop error
expect_log "unknown message (expected: snapshot create <id> | snapshot delete <id> | snapshot rollback <id> | usage | cow_full_policy <error|drop>)"
expect_fail "rollback message without an id" msg snapshot rollback
expect_fail "rollback message with two ids" msg snapshot rollback 1 2
for id in x -1 1.5 4294967296 ""; do
	expect_fail "id '$id'" msg snapshot create "$id"
	expect_fail "rollback id '$id'" msg snapshot rollback "$id"
done
expect_log "invalid snapshot id"
[ "$(dmsetup status work | cut -d' ' -f4-)" = ": no snapshot" ] || fail "a snapshot appeared"
dmsetup remove work
