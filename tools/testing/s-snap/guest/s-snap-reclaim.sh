# SPDX-License-Identifier: GPL-2.0
# vm: disks=128M,256M
# Deleting every snapshot returns the COW usage to its value after format. A
# deletion returns once committed; the space comes back in the background,
# never while the origin is suspended, and after a reload the reclaim goes on
# from what is on the COW device. The id of a snapshot being reclaimed can be
# used again at once.
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
[ "$(dmsetup status work | cut -d' ' -f4-)" = ": no snapshot" ] || fail "status: $(dmsetup status work)"
wait_reclaimed
after=$(usage_field used_chunks)
echo "used chunks after deleting all: $after"
[ "$after" = "$base" ] || fail "usage $after, baseline $base: chunks leaked"

# A snapshot with 2048 exceptions, deleted while the origin is suspended:
# nothing is reclaimed until the origin resumes.
msg snapshot create 5 || fail "create 5"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=256 oflag=direct 2>/dev/null ||
	fail "origin write over 2048 chunks"
[ "$(usage_field shared_exceptions)" = 2048 ] || fail "exceptions: $(msg usage)"
dmsetup suspend work || fail "suspend"
msg snapshot delete 5 || fail "delete 5 of a suspended origin"
[ "$(usage_field snapshots)" = 0 ] || fail "snapshot 5 still listed: $(msg usage)"
sleep 1
[ "$(usage_field deleting_snapshots)" = 1 ] || fail "reclaim ran while suspended: $(msg usage)"
[ "$(usage_field shared_exceptions)" = 2048 ] || fail "reclaim ran while suspended: $(msg usage)"
# Its id is free at once.
msg snapshot create 5 || fail "create 5 while the old 5 waits for its reclaim"
# Removed before anything was reclaimed: the reload finds the deletion on the
# COW device and goes on.
dmsetup remove work || fail "remove of a suspended origin"
load_origin
wait_reclaimed
[ "$(usage_field reclaimed_chunks)" = 2048 ] || fail "reclaim after reload: $(msg usage)"
[ "$(usage_field snapshots)" = 1 ] || fail "snapshots after reclaim: $(msg usage)"
[ "$(usage_field used_chunks)" = "$base" ] || fail "usage after reclaim: $(msg usage)"
# Nothing wrote the origin since the new snapshot 5 was made.
dd if=/dev/mapper/work of=/tmp/origin5 bs=64k count=16 iflag=direct 2>/dev/null
snapshot_device 5
dd if=/dev/mapper/snap5 of=/tmp/snap5 bs=64k count=16 iflag=direct 2>/dev/null
cmp /tmp/origin5 /tmp/snap5 || fail "the new snapshot 5 changed while the old one was reclaimed"
dmsetup remove snap5
msg snapshot delete 5 || fail "delete the new 5"
wait_reclaimed
dmsetup remove work
load_origin
[ "$(usage_field used_chunks)" = "$base" ] || fail "usage changed across reload"
dmsetup remove work
