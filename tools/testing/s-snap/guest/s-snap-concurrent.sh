# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,128M timeout=600
# Concurrent I/O: writers on the origin and on a writable snapshot run while
# readers read other snapshots; every read of a snapshot returns the data of
# the moment it was taken, never origin data written after it.
. /tests/lib
load_origin
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=32 oflag=direct 2>/dev/null || fail "fill"
want1=$(sha256sum </dev/mapper/work)
msg snapshot create 1 || fail "create 1"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=64 seek=100 oflag=direct conv=notrunc 2>/dev/null
want2=$(sha256sum </dev/mapper/work)
msg snapshot create 2 || fail "create 2"
snapshot_device 1
snapshot_device 2

# Four origin writers and one snapshot-2 writer, 4 KiB and 64 KiB, all over the
# device, while two readers hash snapshot 1 and one hashes snapshot 2.
for w in 1 2 3 4; do
	(
		i=0
		while [ $i -lt 40 ]; do
			dd if=/dev/urandom of=/dev/mapper/work bs=4k count=8 \
				seek=$(( (w * 1009 + i * 197) % 8184 )) oflag=direct conv=notrunc 2>/dev/null
			i=$((i + 1))
		done
	) &
done
(
	i=0
	while [ $i -lt 20 ]; do
		dd if=/dev/urandom of=/dev/mapper/snap2 bs=64k count=1 seek=$(( (i * 37) % 512 )) \
			oflag=direct conv=notrunc 2>/dev/null
		i=$((i + 1))
	done
) &
for r in 1 2; do
	(
		for pass in 1 2 3; do
			got=$(dd if=/dev/mapper/snap1 bs=64k iflag=direct 2>/dev/null | sha256sum)
			[ "$got" = "$want1" ] || { echo "reader $r pass $pass: snapshot 1 changed"; exit 1; }
		done
	) &
done
wait_all() {
	rc=0
	for job in $(jobs -p); do
		wait "$job" || rc=1
	done
	return $rc
}
wait_all || fail "a reader saw snapshot 1 change, or a writer failed"
[ "$(sha256sum </dev/mapper/snap1)" = "$want1" ] || fail "snapshot 1 changed"
echo "ok: snapshot 1 unchanged under concurrent origin and snapshot writes"
dmsetup remove snap2
# Snapshot 2 was written to: it differs from what it was; the origin from both.
[ "$(sha256sum </dev/mapper/work)" != "$want2" ] || fail "origin writes were lost"
dmsetup remove snap1
dmsetup remove work
load_origin
snapshot_device 1
[ "$(sha256sum </dev/mapper/snap1)" = "$want1" ] || fail "snapshot 1 changed after reload"
dmsetup remove snap1
dmsetup remove work
echo "s-snap-concurrent: ok"
