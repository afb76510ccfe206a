# SPDX-License-Identifier: GPL-2.0
# vm: disks=8M,128M,4M boots=6 kill=4-12 timeout=180
# The store survives the machine dying at any moment: boots 1-5 run a random
# workload (origin and snapshot writes, fdatasync, snapshot create, delete,
# activate, deactivate) until the host kills QEMU at a random moment; each
# boot first checks what the previous one left: the origin table loads, every
# write acknowledged by the last completed fdatasync is on the origin and on
# the snapshots, snapshots hold exactly what they held (no later origin write
# shows through), and the snapshot list is as recorded (bar a create or delete
# in flight).  Boot 6 only checks, then shows that the check notices damage.
# s-snap-crash records the acknowledged model on /dev/vdc; see its comment for
# the exact rule.
#
# The harness kills with cache=unsafe disks, so what QEMU wrote survives: a
# power cut with a write-through disk cache.  Losing unflushed writes is the
# dm-log-writes test's subject.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
last_boot=6
seed=$(sed -n 's/.*s_snap\.seed=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ "$S_SNAP_BOOT" -lt "$last_boot" ]; then
	s-snap-crash run --boot "$S_SNAP_BOOT" --seed "${seed:-1}" --model /dev/vdc ||
		fail "boot $S_SNAP_BOOT: the state after the kill, or the workload"
	exit 0
fi
verify() {
	s-snap-crash verify --boot "$S_SNAP_BOOT" --model /dev/vdc
}
verify || fail "the state after the last kill"

# Controls: the same check must notice a snapshot nobody created, a snapshot
# showing origin data, and an origin block holding other data than was
# acknowledged: older data, from a snapshot that differs from the origin there
# (random bytes if none does).
load_origin
# "0 <len> s-snap-origin <count> <id>..." or "0 <len> s-snap-origin : no snapshot"
set -- $(dmsetup status work)
id=
[ "$4" = ":" ] || id=$5
blocks=$(($(blockdev --getsz /dev/vda) / 8))
i=0
other="older data from snapshot $id"
if [ -n "$id" ]; then
	snapshot_device "$id"
	while [ $i -lt $blocks ] && same_bytes /dev/mapper/work "/dev/mapper/snap$id" $i $i 1 >/dev/null; do
		i=$((i + 1))
	done
	dd if="/dev/mapper/snap$id" of=/tmp/older.blk bs=4096 skip=$i count=1 iflag=direct 2>/dev/null
	dmsetup remove "snap$id"
	[ $i -lt $blocks ] || id=
fi
if [ -z "$id" ]; then
	i=0
	other="random bytes"
	dd if=/dev/urandom of=/tmp/older.blk bs=4096 count=1 2>/dev/null
	echo "ok: no snapshot differs from the origin: the snapshot control is skipped"
fi
dd if=/dev/mapper/work of=/tmp/origin.blk bs=4096 skip=$i count=1 iflag=direct 2>/dev/null
msg snapshot create 4000000000 || fail "create a snapshot behind the workload's back"
dmsetup remove work
expect_fail "a snapshot nobody created" verify
dmsetup remove_all
load_origin
msg snapshot delete 4000000000 || fail "delete snapshot 4000000000"
if [ -n "$id" ]; then
	snapshot_device "$id"
	dd if=/tmp/origin.blk of="/dev/mapper/snap$id" bs=4096 seek=$i oflag=direct conv=notrunc 2>/dev/null
	dmsetup remove "snap$id"
	dmsetup remove work
	expect_fail "snapshot $id showing the origin's block $i" verify
	dmsetup remove_all
	load_origin
	snapshot_device "$id"
	dd if=/tmp/older.blk of="/dev/mapper/snap$id" bs=4096 seek=$i oflag=direct conv=notrunc 2>/dev/null
	dmsetup remove "snap$id"
fi
dmsetup remove work
# A block written after the last sync may hold its older data after the kill,
# which the check rightly accepts: if it accepts the older data of block $i,
# the control moves on to the next block where the snapshot differs, up to 8.
tries=1
while :; do
	dd if=/tmp/older.blk of=/dev/vda bs=4096 seek=$i oflag=direct conv=notrunc 2>/dev/null
	if ! verify >/tmp/expect_fail.out 2>&1; then
		echo "ok: origin block $i replaced by $other refused: $(tail -n 1 /tmp/expect_fail.out)"
		break
	fi
	dmsetup remove_all
	dd if=/tmp/origin.blk of=/dev/vda bs=4096 seek=$i oflag=direct conv=notrunc 2>/dev/null
	if [ -z "$id" ] || [ $tries -ge 8 ]; then
		cat /tmp/expect_fail.out
		fail "origin block $i replaced by $other: 'verify' succeeded ($tries blocks tried)"
	fi
	echo "ok: the check accepts origin block $i holding the data of snapshot $id (a write after the last sync may be lost): next block"
	tries=$((tries + 1))
	load_origin
	snapshot_device "$id"
	i=$((i + 1))
	while [ $i -lt $blocks ] && same_bytes /dev/mapper/work "/dev/mapper/snap$id" $i $i 1 >/dev/null; do
		i=$((i + 1))
	done
	[ $i -lt $blocks ] || fail "origin block replaced by $other: 'verify' succeeded, and no block is left to try"
	dd if="/dev/mapper/snap$id" of=/tmp/older.blk bs=4096 skip=$i count=1 iflag=direct 2>/dev/null
	dd if=/dev/mapper/work of=/tmp/origin.blk bs=4096 skip=$i count=1 iflag=direct 2>/dev/null
	dmsetup remove "snap$id"
	dmsetup remove work
done
dmsetup remove_all
dd if=/tmp/origin.blk of=/dev/vda bs=4096 seek=$i oflag=direct conv=notrunc 2>/dev/null
verify >/dev/null || fail "the state with every control undone"
echo "ok: the check noticed each control, and passes once they are undone"
