# SPDX-License-Identifier: GPL-2.0
# vm: disks=128M,128M timeout=900
# Discards. On a snapshot, a discard frees the snapshot's own copy of every
# chunk it covers entirely: the snapshot reads the copy of its time kept for
# other snapshots again, or zeroes where there is none. Nothing goes down,
# and what it covers in part or shares stays. On the origin, a discard
# reaches the origin disk only for chunks no snapshot shares. fstrim works
# on ext4 over a snapshot (and frees the deleted files' chunks) and over
# the origin.
. /tests/lib

# origin_discarded: sectors discarded on the origin disk so far.
origin_discarded() {
	awk '{ print $14 }' /sys/block/vda/stat
}

# wait_usage FIELD VALUE: the usage field reaches VALUE (the worker commits
# after a discard freed chunks), within 30 s.
wait_usage() {
	n=0
	while [ "$(usage_field "$1")" != "$2" ]; do
		n=$((n + 1))
		[ $n -le 300 ] || fail "usage $1 is $(usage_field "$1"), want $2: $(msg usage)"
		sleep 0.1
	done
}

[ "$(cat /sys/block/vda/queue/discard_max_bytes)" != 0 ] || fail "the origin disk takes no discards"
dd if=/dev/urandom of=/dev/vda bs=1M count=16 oflag=direct 2>/dev/null || fail "fill origin"
dd if=/dev/vda of=/tmp/origin bs=1M count=16 iflag=direct 2>/dev/null
load_origin 128
msg snapshot create 1 || fail "create 1"
msg snapshot create 2 || fail "create 2"
# Origin chunks 0..31 are rewritten: one copy of each, shared by both
# snapshots, keeps their old data.
dd if=/dev/urandom of=/tmp/new bs=64k count=32 2>/dev/null
dd if=/tmp/new of=/dev/mapper/work bs=64k count=32 oflag=direct 2>/dev/null || fail "origin write"
cp /tmp/origin /tmp/origin-now
dd if=/tmp/new of=/tmp/origin-now bs=64k count=32 conv=notrunc 2>/dev/null
snapshot_device 1
granularity=$(cat /sys/block/dm-"$(dmsetup info -c --noheadings -o minor snap1)"/queue/discard_granularity)
[ "$granularity" = 65536 ] || fail "snapshot discard granularity $granularity, want the chunk (65536)"

# Snapshot 1 owns chunks 0..63 (4 MiB) and chunk 100 (written in part).
dd if=/dev/urandom of=/tmp/mine bs=64k count=64 2>/dev/null
dd if=/tmp/mine of=/dev/mapper/snap1 bs=64k count=64 oflag=direct 2>/dev/null || fail "write"
dd if=/dev/urandom of=/dev/mapper/snap1 bs=4k seek=$((100 * 16 + 5)) count=1 oflag=direct \
	2>/dev/null || fail "partial write"
sync
[ "$(usage_field private_exceptions)" = 65 ] || fail "private exceptions: $(msg usage)"
data=$(usage_field data_chunks)
free=$(usage_field free_chunks)
discarded=$(origin_discarded)

# Chunks 0..63 whole, chunk 64 in part, chunk 100 in part: the 64 whole
# chunks are freed. Snapshot 1 reads the copies of its own time of chunks
# 0..31 again; chunks 32..63 have none (the origin, newer than the
# snapshot, must not show through), so they read zeroes, and their
# exceptions stay, naming no chunk.
blkdiscard -o 0 -l $((4096 * 1024 + 4096)) /dev/mapper/snap1 || fail "blkdiscard snapshot"
blkdiscard -o $((100 * 65536)) -l 4096 /dev/mapper/snap1 || fail "blkdiscard part of a chunk"
wait_usage data_chunks $((data - 64))
[ "$(usage_field private_exceptions)" = 33 ] || fail "private exceptions: $(msg usage)"
[ "$(usage_field free_chunks)" -ge $((free + 64)) ] || fail "space not returned: $(msg usage)"
[ "$(origin_discarded)" = "$discarded" ] || fail "a snapshot discard reached the origin disk"
echo "ok: a snapshot discard frees the 64 chunks it covers, nothing else"

# Writes over chunks that read zeroes: 4 KiB into chunk 40 (the rest of the
# chunk stays zeroes), and the whole of chunk 50.
dd if=/dev/urandom of=/tmp/part bs=4k count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/whole bs=64k count=1 2>/dev/null
dd if=/tmp/part of=/dev/mapper/snap1 bs=4k seek=$((40 * 16 + 3)) oflag=direct 2>/dev/null ||
	fail "write into a zeroed chunk"
dd if=/tmp/whole of=/dev/mapper/snap1 bs=64k seek=50 oflag=direct 2>/dev/null ||
	fail "overwrite a zeroed chunk"
sync
[ "$(usage_field private_exceptions)" = 33 ] || fail "writes over zeroes: $(msg usage)"
[ "$(usage_field data_chunks)" = $((data - 62)) ] || fail "writes over zeroes: $(msg usage)"

# check: snapshot 1 reads its old data or zeroes where it discarded, what
# it wrote since, and its writes elsewhere; snapshot 2 reads the old data,
# the origin the new.
check() {
	cp /tmp/origin /tmp/want1
	dd if=/dev/zero of=/tmp/want1 bs=64k seek=32 count=32 conv=notrunc 2>/dev/null
	dd if=/tmp/part of=/tmp/want1 bs=4k seek=$((40 * 16 + 3)) conv=notrunc 2>/dev/null
	dd if=/tmp/whole of=/tmp/want1 bs=64k seek=50 conv=notrunc 2>/dev/null
	dd if=/dev/mapper/snap1 of=/tmp/got bs=64k count=64 iflag=direct 2>/dev/null
	dd if=/tmp/want1 of=/tmp/want bs=64k count=64 2>/dev/null
	cmp /tmp/got /tmp/want || fail "snapshot 1 reads wrong data ($1)"
	snapshot_device 2
	dd if=/dev/mapper/snap2 of=/tmp/got bs=1M count=16 iflag=direct 2>/dev/null
	dmsetup remove snap2
	cmp /tmp/got /tmp/origin || fail "snapshot 2 changed ($1)"
	dd if=/dev/mapper/work of=/tmp/got bs=1M count=16 iflag=direct 2>/dev/null
	cmp /tmp/got /tmp/origin-now || fail "the origin changed ($1)"
	echo "ok: snapshot 1, snapshot 2 and the origin read right ($1)"
}
check "before a reload"
dmsetup remove snap1
dmsetup remove work
load_origin 128
[ "$(usage_field private_exceptions)" = 33 ] || fail "after the reload: $(msg usage)"
[ "$(usage_field data_chunks)" = $((data - 62)) ] || fail "after the reload: $(msg usage)"
snapshot_device 1
check "after a reload"

# The origin: chunks 200..203 are shared by both snapshots, so a discard of
# them does not reach the disk; chunk 210, once copied by an origin write,
# is shared by nobody, so its discard does.
blkdiscard -o $((200 * 65536)) -l $((4 * 65536)) /dev/mapper/work || fail "blkdiscard origin"
[ "$(origin_discarded)" = "$discarded" ] || fail "a discard of shared origin chunks reached the disk"
dd if=/dev/mapper/work of=/tmp/got bs=64k skip=200 count=4 iflag=direct 2>/dev/null
dd if=/tmp/origin of=/tmp/want bs=64k skip=200 count=4 2>/dev/null
cmp /tmp/got /tmp/want || fail "shared origin chunks changed"
dd if=/dev/urandom of=/dev/mapper/work bs=64k seek=210 count=1 oflag=direct 2>/dev/null ||
	fail "origin write"
sync
blkdiscard -o $((210 * 65536)) -l 65536 /dev/mapper/work || fail "blkdiscard unshared chunk"
[ "$(origin_discarded)" = $((discarded + 128)) ] ||
	fail "discard of an unshared chunk: $(($(origin_discarded) - discarded)) sectors reached the disk, want 128"
echo "ok: origin discards reach the disk for unshared chunks only"
dd if=/dev/mapper/snap1 of=/tmp/got bs=64k skip=210 count=1 iflag=direct 2>/dev/null
dd if=/tmp/origin of=/tmp/want bs=64k skip=210 count=1 2>/dev/null
cmp /tmp/got /tmp/want || fail "snapshot 1 lost its data of chunk 210"
dmsetup remove snap1

# fstrim on ext4 over a snapshot: the files were written over origin data
# (no copy of the snapshot's time exists); the deleted files' chunks are
# freed (they read zeroes), and the files left read right.
msg snapshot create 3 || fail "create 3"
snapshot_device 3
# No lazy initialization: ext4's background zeroing of inode tables would
# write new chunks (private exceptions) while the test counts them.
mkfs.ext4 -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/snap3 ||
	fail "mkfs on snapshot 3"
mkdir -p /mnt/s
mount -o nodiscard,noinit_itable /dev/mapper/snap3 /mnt/s || fail "mount snapshot 3"
for i in 1 2 3 4; do
	dd if=/dev/urandom of=/mnt/s/file$i bs=1M count=4 2>/dev/null || fail "write file$i"
done
sync
rm /mnt/s/file1 /mnt/s/file3
(cd /mnt/s && sha256sum file2 file4) >/tmp/kept.sum
# ext4 trims blocks freed by committed transactions only.
sync
data=$(usage_field data_chunks)
fstrim /mnt/s || fail "fstrim on the snapshot"
umount /mnt/s
# The two deleted files took 8 MiB, 128 chunks, less at most two at each
# file's ends that a kept file may share; fstrim may free more (chunks mkfs
# wrote where no file is).
n=0
while [ "$(usage_field data_chunks)" -gt $((data - 124)) ]; do
	n=$((n + 1))
	[ $n -le 300 ] || fail "fstrim on the snapshot freed too little: $data chunks before, $(msg usage)"
	sleep 0.1
done
echo "ok: fstrim on snapshot 3 freed $((data - $(usage_field data_chunks))) chunks"
e2fsck -fn /dev/mapper/snap3 || fail "e2fsck after fstrim"
mount -o ro /dev/mapper/snap3 /mnt/s || fail "remount snapshot 3"
(cd /mnt/s && sha256sum file2 file4) | cmp - /tmp/kept.sum || fail "kept files changed"
umount /mnt/s
dmsetup remove snap3
dd if=/dev/mapper/work of=/tmp/got bs=64k count=64 iflag=direct 2>/dev/null
dd if=/tmp/origin-now of=/tmp/want bs=64k count=64 2>/dev/null
cmp /tmp/got /tmp/want || fail "the origin changed under snapshot 3's fstrim"

# fstrim on ext4 over the origin: while a snapshot shares the free blocks
# nothing reaches the disk; once no snapshot is left, the free blocks are
# discarded on it. (ext4 remembers which groups it trimmed until the next
# mount, so the second fstrim follows a remount.)
mkfs.ext4 -q -E nodiscard /dev/mapper/work || fail "mkfs on the origin"
mount -o nodiscard /dev/mapper/work /mnt/s || fail "mount the origin"
dd if=/dev/urandom of=/mnt/s/a bs=1M count=4 2>/dev/null || fail "write a"
dd if=/dev/urandom of=/mnt/s/b bs=1M count=4 2>/dev/null || fail "write b"
sync
rm /mnt/s/a
sha256sum /mnt/s/b >/tmp/b.sum
sync
msg snapshot create 4 || fail "create 4"
discarded=$(origin_discarded)
fstrim /mnt/s || fail "fstrim on the origin"
[ "$(origin_discarded)" = "$discarded" ] || fail "fstrim discarded blocks a snapshot shares"
for id in 1 2 3 4; do
	msg snapshot delete $id || fail "delete $id"
done
wait_reclaimed
umount /mnt/s
mount -o nodiscard /dev/mapper/work /mnt/s || fail "remount the origin"
fstrim /mnt/s || fail "fstrim on the origin without snapshots"
trimmed=$(($(origin_discarded) - discarded))
[ "$trimmed" -ge $((100 * 2048)) ] || fail "fstrim discarded $trimmed sectors on the disk, want 100 MiB or more"
sha256sum -c /tmp/b.sum >/dev/null || fail "file b changed"
umount /mnt/s
e2fsck -fn /dev/mapper/work || fail "e2fsck on the origin"
echo "ok: fstrim on the origin discarded $trimmed sectors once no snapshot shared them"
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
dmsetup remove work
echo "ok: discards"
