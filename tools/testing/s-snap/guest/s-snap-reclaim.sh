# SPDX-License-Identifier: GPL-2.0
# vm: disks=128M,256M
# Deleting every snapshot returns the COW usage to its value after format.
. /tests/lib
load_origin
base=$(usage_field used_chunks)
[ -n "$base" ] || fail "no usage reply: $(msg usage)"
echo "used chunks after format: $base"
for id in 1 2 3 4; do
	msg snapshot create $id || fail "create $id"
	dd if=/dev/urandom of=/dev/mapper/work bs=64k count=64 seek=$((id * 16)) \
		oflag=direct 2>/dev/null || fail "origin write"
done
snapshot_device 2
dd if=/dev/urandom of=/dev/mapper/snap2 bs=64k count=32 seek=200 oflag=direct 2>/dev/null ||
	fail "snapshot write"
dmsetup remove snap2
used=$(usage_field used_chunks)
echo "used chunks with 4 snapshots: $used"
[ "$used" -gt "$base" ] || fail "copies did not use chunks"
for id in 3 1 4 2; do
	msg snapshot delete $id || fail "delete $id"
done
after=$(usage_field used_chunks)
echo "used chunks after deleting all: $after"
[ "$after" = "$base" ] || fail "usage $after, baseline $base: chunks leaked"
dmsetup remove work
load_origin
[ "$(usage_field used_chunks)" = "$base" ] || fail "usage changed across reload"
dmsetup remove work
