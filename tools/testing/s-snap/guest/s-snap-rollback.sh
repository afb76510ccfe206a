# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,256M timeout=1200
# Rollback: "snapshot rollback <id>" makes the origin read as the snapshot
# from the moment the message returns, copies the snapshot's data back in
# the background, and keeps every other snapshot's data. Checked: the
# refusals; a rollback started while the origin is suspended (progress in
# usage, the origin reading as the snapshot at once); a second rollback to
# the same snapshot with origin writes and reads racing the copy back,
# against a model (the snapshot plus the writes issued after the message);
# and ext4 on the origin rolled back to a snapshot of its files.
. /tests/lib

# image DEV FILE: the first 64 MiB of DEV.
image() {
	dd if="$1" of="$2" bs=1M count=64 iflag=direct 2>/dev/null || fail "read $1"
}

# snapshots_unchanged: snapshots 1 and 2 read as they did before the rollbacks.
snapshots_unchanged() {
	for id in 1 2; do
		snapshot_image $id /tmp/got.img
		cmp /tmp/got.img /tmp/snap$id.img || fail "snapshot $id changed"
	done
}

# snapshot_image ID FILE: snapshot ID's data, through its device.
snapshot_image() {
	snapshot_device "$1"
	image "/dev/mapper/snap$1" "$2"
	dmsetup remove "snap$1"
}

dd if=/dev/urandom of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null || fail "fill origin"
load_origin 128
msg snapshot create 1 || fail "create 1"
# The origin changes after snapshot 1 (copies of its old data are shared
# exceptions), snapshot 2 sees some of that, and snapshot 1 writes data of
# its own and discards part of it (private exceptions, and chunks that read
# zeroes).
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=16 seek=8 oflag=direct 2>/dev/null ||
	fail "origin write"
msg snapshot create 2 || fail "create 2"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=8 seek=40 oflag=direct 2>/dev/null ||
	fail "origin write"
snapshot_device 1
dd if=/dev/urandom of=/dev/mapper/snap1 bs=64k count=32 seek=800 oflag=direct 2>/dev/null ||
	fail "snapshot write"
blkdiscard -o $((816 * 65536)) -l $((16 * 65536)) /dev/mapper/snap1 || fail "snapshot discard"
dmsetup remove snap1
snapshot_image 1 /tmp/snap1.img
snapshot_image 2 /tmp/snap2.img
image /dev/mapper/work /tmp/before.img
cmp -s /tmp/before.img /tmp/snap1.img && fail "snapshot 1 equals the origin: nothing to test"

# Refusals, each with a log line.
dmesg -c >/dev/null
expect_fail "rollback to a snapshot that does not exist" msg snapshot rollback 7
expect_log "snapshot 7 does not exist"
expect_fail "rollback id that is no number" msg snapshot rollback x1
expect_log "invalid snapshot id 'x1'"
snapshot_device 1
expect_fail "rollback to a snapshot with an active device" msg snapshot rollback 1
expect_log "snapshot 1 has an active s-snap device"
dmsetup remove snap1

# Started while the origin is suspended: nothing is copied back until it
# resumes, and then the origin reads as snapshot 1 at once.
dmsetup suspend work
msg snapshot rollback 1 || fail "rollback to 1"
[ "$(usage_field rollback_snapshot)" = 1 ] || fail "usage: $(msg usage | head -n 1)"
total=$(usage_field rollback_chunks_total)
[ "$total" -gt 100 ] || fail "only $total chunks to copy back: $(msg usage | head -n 1)"
[ "$(usage_field rollback_chunks_left)" = "$total" ] || fail "copied back while suspended"
echo "ok: rollback to snapshot 1 started, $total chunks to copy back"
dmesg -c >/dev/null
expect_fail "a second rollback while one runs" msg snapshot rollback 2
expect_log "a rollback runs"
expect_fail "a snapshot create while a rollback runs" msg snapshot create 9
expect_log "cannot be created while a rollback runs"
expect_fail "deleting the snapshot rolled back to" msg snapshot delete 1
expect_log "the origin is rolled back to it"
expect_fail "activating the snapshot rolled back to" \
	dmsetup create snap1 --table "0 $(blockdev --getsz /dev/vda) s-snap /dev/vda 1"
expect_log "The origin is being rolled back to this snapshot"
dmsetup resume work
image /dev/mapper/work /tmp/now.img
cmp /tmp/now.img /tmp/snap1.img || fail "the origin does not read as snapshot 1 during the rollback"
left=$(usage_field rollback_chunks_left)
echo "ok: the origin read as snapshot 1 while $left of $total chunks were still to copy back"
wait_rollback
expect_log "rollback finished"
image /dev/mapper/work /tmp/now.img
cmp /tmp/now.img /tmp/snap1.img || fail "the origin is not snapshot 1 after the rollback"
snapshots_unchanged
echo "ok: rollback of a suspended origin; snapshots 1 and 2 unchanged"

# The same snapshot again, the origin changed since, with writes and reads
# racing the copy back: 200 distinct 4 KiB blocks written after the message
# returns (their block numbers spread over the origin), and reads of chunks
# the writer never touches.
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=24 seek=4 oflag=direct 2>/dev/null ||
	fail "origin write"
i=1
: >/tmp/blocks
while [ $i -le 200 ]; do
	echo $(((i * 7919) % 16384)) >>/tmp/blocks
	i=$((i + 1))
done
dd if=/dev/urandom of=/tmp/payload bs=4096 count=200 2>/dev/null
msg snapshot rollback 1 || fail "second rollback to 1"
(
	i=0
	while read -r b; do
		dd if=/tmp/payload of=/dev/mapper/work bs=4096 skip=$i seek="$b" count=1 \
			oflag=direct conv=notrunc 2>/dev/null || exit 1
		i=$((i + 1))
	done </tmp/blocks
) &
writer=$!
# Chunks of 16 blocks that no write touches.
untouched=""
c=0
while [ $c -lt 1024 ]; do
	if ! awk -v c=$c 'int($1 / 16) == c { found = 1 } END { exit !found }' /tmp/blocks; then
		untouched="$untouched $c"
	fi
	c=$((c + 37))
done
reads=0
for c in $untouched; do
	same_bytes /dev/mapper/work /tmp/snap1.img $((c * 16)) $((c * 16)) 16 ||
		fail "origin chunk $c does not read as snapshot 1 during the rollback"
	reads=$((reads + 1))
done
wait $writer || fail "an origin write failed during the rollback"
cp /tmp/snap1.img /tmp/want.img
i=0
while read -r b; do
	dd if=/tmp/payload of=/tmp/want.img bs=4096 skip=$i seek="$b" count=1 conv=notrunc 2>/dev/null
	i=$((i + 1))
done </tmp/blocks
image /dev/mapper/work /tmp/now.img
cmp /tmp/now.img /tmp/want.img || fail "origin is not snapshot 1 plus the writes issued after the message"
wait_rollback
image /dev/mapper/work /tmp/now.img
cmp /tmp/now.img /tmp/want.img || fail "after the rollback: not snapshot 1 plus the writes"
snapshots_unchanged
echo "ok: second rollback to 1 with 200 writes and $reads chunk reads racing it; model matches"

# ext4: files at the snapshot come back.
mkfs.ext4 -q -E nodiscard /dev/mapper/work || fail "mkfs"
mkdir -p /mnt/o
mount -o nodiscard /dev/mapper/work /mnt/o || fail "mount"
for f in a b c d; do
	dd if=/dev/urandom of=/mnt/o/$f bs=1M count=3 2>/dev/null || fail "write $f"
done
mkdir /mnt/o/dir && echo "at the snapshot" >/mnt/o/dir/note
(cd /mnt/o && find . -type f | sort | xargs md5sum) >/tmp/files.sum
umount /mnt/o
msg snapshot create 3 || fail "create 3"
mount -o nodiscard /dev/mapper/work /mnt/o || fail "mount again"
rm /mnt/o/a
dd if=/dev/urandom of=/mnt/o/b bs=1M count=3 conv=notrunc 2>/dev/null || fail "rewrite b"
dd if=/dev/urandom of=/mnt/o/e bs=1M count=5 2>/dev/null || fail "write e"
echo "changed" >/mnt/o/dir/note
umount /mnt/o
msg snapshot rollback 3 || fail "rollback to 3"
e2fsck -fn /dev/mapper/work || fail "e2fsck right after the rollback message"
mount -o ro /dev/mapper/work /mnt/o || fail "mount after the rollback"
(cd /mnt/o && find . -type f | sort | xargs md5sum) | cmp - /tmp/files.sum ||
	fail "the files are not as at the snapshot"
umount /mnt/o
wait_rollback
e2fsck -fn /dev/mapper/work || fail "e2fsck after the rollback"
echo "ok: ext4 rolled back to snapshot 3: e2fsck clean, files as at the snapshot"

for id in 1 2 3; do
	msg snapshot delete $id || fail "delete $id"
done
wait_reclaimed
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
[ "$(usage_field data_chunks)" = 0 ] || fail "space left: $(msg usage | head -n 1)"
dmsetup remove work
s-snap-tool check /dev/vdb || fail "s-snap-tool check"
echo "ok: rollback"
