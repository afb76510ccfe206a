# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,256M,128M boots=2 kill=2-4 timeout=900
# A rollback survives the machine dying while it copies back. Boot 1 rolls
# the origin back to snapshot 1 (16,384 chunks of 4 KiB, the origin behind
# dm-delay with 50 ms flushes, so that the copy back takes a minute) and
# reads the origin, which must read as snapshot 1, until the host kills
# QEMU. Boot 2 finds the rollback in the middle, the origin reading as
# snapshot 1 while the copy back goes on, then done, with snapshot 1 and
# snapshot 2 unchanged and the store checking clean. /dev/vdc holds what
# snapshots 1 and 2 must read.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
modprobe dm_delay 2>/dev/null
size=$(blockdev --getsz /dev/vda)

# slow_origin FLUSH_MS: device "slow" over /dev/vda whose flushes take FLUSH_MS.
slow_origin() {
	echo "0 $size delay /dev/vda 0 0 /dev/vda 0 0 /dev/vda 0 $1" | dmsetup create slow ||
		fail "cannot create the dm-delay origin"
}

# origin_on_slow: the origin target over "slow", 4 KiB chunks.
origin_on_slow() {
	echo "0 $size s-snap-origin /dev/mapper/slow /dev/vdb S 8" | dmsetup create work ||
		fail "cannot load s-snap-origin"
}

# snapshot_on_slow ID: device "snapID" for snapshot ID of the origin over "slow".
snapshot_on_slow() {
	echo "0 $size s-snap /dev/mapper/slow $1" | dmsetup create "snap$1" ||
		fail "cannot load s-snap for snapshot $1"
}

# same_as_vdc DEV AT_MIB: DEV's 64 MiB equal /dev/vdc's from AT_MIB MiB.
same_as_vdc() {
	dd if="$1" of=/tmp/got bs=1M count=64 iflag=direct 2>/dev/null
	dd if=/dev/vdc of=/tmp/want bs=1M skip="$2" count=64 iflag=direct 2>/dev/null
	cmp -s /tmp/got /tmp/want
}

if [ "$S_SNAP_BOOT" = 1 ]; then
	dd if=/dev/urandom of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null || fail "fill origin"
	slow_origin 0
	origin_on_slow
	msg snapshot create 1 || fail "create 1"
	dd if=/dev/urandom of=/dev/mapper/work bs=1M count=64 oflag=direct 2>/dev/null ||
		fail "rewrite the origin"
	msg snapshot create 2 || fail "create 2"
	dd if=/dev/urandom of=/dev/mapper/work bs=1M count=16 seek=24 oflag=direct 2>/dev/null ||
		fail "origin write"
	for id in 1 2; do
		snapshot_on_slow $id
		dd if=/dev/mapper/snap$id of=/dev/vdc bs=1M count=64 seek=$(((id - 1) * 64)) \
			iflag=direct oflag=direct 2>/dev/null || fail "save snapshot $id"
		dmsetup remove snap$id
	done
	sync
	# Slow flushes from now on: the copy back takes its time.
	dmsetup suspend work
	echo "0 $size delay /dev/vda 0 0 /dev/vda 0 0 /dev/vda 0 50" | dmsetup load slow
	dmsetup resume slow
	dmsetup resume work
	msg snapshot rollback 1 || fail "rollback to 1"
	echo "ok: rolling back $(usage_field rollback_chunks_total) chunks"
	echo "@@S-SNAP ARMED"
	while true; do
		c=$(( $(od -An -N2 -tu2 /dev/urandom) % 16384 ))
		same_bytes /dev/mapper/work /dev/vdc $c $c 1 ||
			fail "origin block $c does not read as snapshot 1 during the rollback"
	done
fi

# Boot 2: after the kill.
slow_origin 0
origin_on_slow
[ "$(usage_field rollback_snapshot)" = 1 ] || fail "no rollback after the kill: $(msg usage | head -n 1)"
left=$(usage_field rollback_chunks_left)
total=$(usage_field rollback_chunks_total)
[ "$left" -gt 0 ] || fail "the kill came after the end of the rollback"
echo "ok: after the kill the rollback resumes with $left of $total chunks left"
same_as_vdc /dev/mapper/work 0 || fail "the origin does not read as snapshot 1 after the kill"
echo "ok: the origin reads as snapshot 1 while the copy back resumes"
wait_rollback
same_as_vdc /dev/mapper/work 0 || fail "the origin is not snapshot 1 after the rollback"
for id in 1 2; do
	snapshot_on_slow $id
	same_as_vdc /dev/mapper/snap$id $(((id - 1) * 64)) || fail "snapshot $id changed"
	dmsetup remove snap$id
done
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
dmsetup remove work
s-snap-tool check /dev/vdb || fail "s-snap-tool check"
echo "ok: rollback after a VM kill"
