# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Corrupted store: the block holding the newest superblock reads back as zeros
# (a lost write, a discarded block) while the other slot holds the in-progress
# image a clean shutdown leaves there. The store must be refused, or opened
# with its snapshot; it must not be formatted again, which would silently lose
# every snapshot. Found by s-snap-corrupt-store.
. /tests/lib
load_origin
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=16 oflag=direct 2>/dev/null
msg snapshot create 1 || fail "create"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=16 oflag=direct 2>/dev/null
dmsetup remove work
# Sequence number (superblock offset 32) of slot N (4 KiB block N).
seq_of() {
	dd if=/dev/vdb bs=1 skip=$(($1 * 4096 + 32)) count=8 2>/dev/null | od -An -tu8 | tr -d ' '
}
# Each open writes the newest superblock to the other slot: open once more if
# needed, so that slot 1 is the newest and slot 0 holds the image.
if [ "$(seq_of 1)" = 0 ]; then
	load_origin
	dmsetup remove work
fi
echo "slot 0 sequence $(seq_of 0), slot 1 sequence $(seq_of 1)"
[ "$(seq_of 0)" = 0 ] && [ "$(seq_of 1)" != 0 ] || fail "slot 1 should be the newest superblock"
dd if=/dev/zero of=/dev/vdb bs=4096 seek=1 count=1 conv=notrunc 2>/dev/null
if origin_table | dmsetup create work 2>/tmp/err; then
	status=$(dmsetup status work | cut -d' ' -f4-)
	dmsetup remove work
	[ "$status" = "1 1" ] || fail "store opened with snapshots '$status' instead of '1 1': it was formatted again"
	echo "ok: store opened with its snapshot"
else
	cat /tmp/err
	echo "ok: store refused"
fi
