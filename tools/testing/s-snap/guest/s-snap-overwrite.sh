# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# A snapshot write that covers a whole chunk the snapshot does not own yet is
# sent straight to a new chunk: the origin is not read for it. A write of part
# of such a chunk still copies the chunk first. Either way the snapshot reads
# what was written, the origin and the other snapshots keep their data, and
# it all survives a reload.
. /tests/lib

# origin_sectors_read: sectors read from the origin disk so far.
origin_sectors_read() {
	awk '{ print $3 }' /sys/block/vda/stat
}

dd if=/dev/urandom of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null || fail "fill origin"
dd if=/dev/vda of=/tmp/origin bs=1M count=64 iflag=direct 2>/dev/null
load_origin 128
msg snapshot create 1 || fail "create 1"
msg snapshot create 2 || fail "create 2"
snapshot_device 1

# Chunks 0..15 of snapshot 1, 64 KiB each (one chunk) with O_DIRECT.
dd if=/dev/urandom of=/tmp/whole bs=64k count=16 2>/dev/null
before=$(origin_sectors_read)
dd if=/tmp/whole of=/dev/mapper/snap1 bs=64k count=16 oflag=direct 2>/dev/null ||
	fail "whole-chunk writes"
read_for_whole=$(($(origin_sectors_read) - before))
[ "$read_for_whole" = 0 ] ||
	fail "16 whole-chunk snapshot writes read $read_for_whole origin sectors, want 0"
echo "ok: whole-chunk snapshot writes read nothing from the origin"

# A 4 KiB write into chunk 100 copies the chunk (128 sectors) first.
dd if=/dev/urandom of=/tmp/part bs=4k count=1 2>/dev/null
before=$(origin_sectors_read)
dd if=/tmp/part of=/dev/mapper/snap1 bs=4k seek=$((100 * 16 + 3)) count=1 oflag=direct \
	2>/dev/null || fail "partial write"
read_for_part=$(($(origin_sectors_read) - before))
[ "$read_for_part" -ge 128 ] ||
	fail "a partial snapshot write read $read_for_part origin sectors, want the chunk's 128"
echo "ok: a partial write copies its chunk ($read_for_part sectors read)"

# check: snapshot 1 reads the writes over the origin's old data; snapshot 2
# and the origin read the old data.
check() {
	cp /tmp/origin /tmp/want1
	dd if=/tmp/whole of=/tmp/want1 bs=64k count=16 conv=notrunc 2>/dev/null
	dd if=/tmp/part of=/tmp/want1 bs=4k seek=$((100 * 16 + 3)) count=1 conv=notrunc 2>/dev/null
	dd if=/dev/mapper/snap1 of=/tmp/got bs=1M count=64 iflag=direct 2>/dev/null
	cmp /tmp/got /tmp/want1 || fail "snapshot 1 does not read its writes ($1)"
	snapshot_device 2
	dd if=/dev/mapper/snap2 of=/tmp/got bs=1M count=64 iflag=direct 2>/dev/null
	dmsetup remove snap2
	cmp /tmp/got /tmp/origin || fail "snapshot 2 changed ($1)"
	dd if=/dev/mapper/work of=/tmp/got bs=1M count=64 iflag=direct 2>/dev/null
	cmp /tmp/got /tmp/origin || fail "the origin changed ($1)"
	echo "ok: snapshot 1 reads its writes, snapshot 2 and the origin their data ($1)"
}
check "before the reload"
dmsetup remove snap1
dmsetup remove work
load_origin 128
snapshot_device 1
check "after the reload"

# Writing the origin now copies for snapshot 2 only; snapshot 1 owns its chunks.
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=16 oflag=direct 2>/dev/null || fail "origin write"
dd if=/dev/mapper/snap1 of=/tmp/got bs=64k count=16 iflag=direct 2>/dev/null
cmp /tmp/got /tmp/whole || fail "snapshot 1 changed under an origin write"
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
dmsetup remove snap1
dmsetup remove work
echo "ok: whole-chunk snapshot writes need no copy"
