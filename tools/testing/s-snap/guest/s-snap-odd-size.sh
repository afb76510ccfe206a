# SPDX-License-Identifier: GPL-2.0
# vm: disks=131078s,64M
# An origin whose size is not a multiple of the chunk size (131078 sectors,
# the last chunk has 6 sectors with every chunk size, 8, 16 and 1024
# sectors, as with the posting's 268430022-sector origin). Origin writes and snapshot writes to the last
# chunk copy only the sectors that exist, the store keeps working, and the
# origin and every snapshot read what they must, also after a reload. A
# discard of the whole last chunk of a snapshot frees it like any chunk (it
# then reads the snapshot's old data, or zeroes). A rollback copies the
# last chunk back like any other.
. /tests/lib
sectors=$(blockdev --getsz /dev/vda)
[ "$sectors" = 131078 ] || fail "origin has $sectors sectors, want 131078"
last=131072

# tail6 DEVICE FILE: the 6 sectors of the last chunk of DEVICE into FILE.
tail6() {
	dd if="$1" of="$2" bs=512 skip=$last count=6 iflag=direct 2>/dev/null ||
		fail "cannot read the last chunk of $1"
}
# expect_last DEVICE FILE: the last chunk of DEVICE reads as FILE.
expect_last() {
	tail6 "$1" /tmp/r
	cmp /tmp/r "$2" >/dev/null || fail "$1 does not read $2 in its last chunk"
}
# write_last DEVICE FILE: random data into FILE, then over the last chunk of
# DEVICE, which must read it back.
write_last() {
	dd if=/dev/urandom of="$2" bs=512 count=6 2>/dev/null
	dd if="$2" of="$1" bs=512 seek=$last count=6 oflag=direct 2>/dev/null ||
		fail "write to the last chunk of $1 failed"
	expect_last "$1" "$2"
}
store_ok() {
	[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
}

for chunk in 8 16 1024; do
	echo "chunk size $chunk sectors"
	# A fresh origin, and a COW device without a store (both superblocks zeroed).
	dd if=/dev/urandom of=/dev/vda bs=512 count="$sectors" oflag=direct 2>/dev/null ||
		fail "cannot fill the origin"
	dd if=/dev/zero of=/dev/vdb bs=1M count=1 oflag=direct 2>/dev/null || fail "cannot zero the COW"
	tail6 /dev/vda /tmp/v0
	load_origin $chunk
	msg snapshot create 1 || fail "create 1"
	msg snapshot create 2 || fail "create 2"
	snapshot_device 1
	snapshot_device 2

	# An origin write to the last chunk copies its 6 sectors for snapshots 1 and 2.
	write_last /dev/mapper/work /tmp/v1
	expect_last /dev/mapper/snap1 /tmp/v0
	expect_last /dev/mapper/snap2 /tmp/v0
	store_ok
	echo "ok: origin write to the partial last chunk (chunk $chunk)"

	# Snapshot 1 writes its last chunk (now a COW chunk shared with snapshot 2):
	# an unshare from the COW device.
	write_last /dev/mapper/snap1 /tmp/s1
	expect_last /dev/mapper/snap2 /tmp/v0
	# Snapshot 3 shares the last chunk with the origin: its write unshares from
	# the origin, with the clamped length too.
	msg snapshot create 3 || fail "create 3"
	snapshot_device 3
	write_last /dev/mapper/snap3 /tmp/s3
	expect_last /dev/mapper/work /tmp/v1
	store_ok
	echo "ok: snapshot writes to the partial last chunk (chunk $chunk)"

	# The rest of the device still works: a first write elsewhere copies.
	dd if=/dev/urandom of=/dev/mapper/work bs=4096 count=4 seek=100 oflag=direct 2>/dev/null ||
		fail "origin write after the last-chunk writes"
	store_ok

	# Everything persists across a reload.
	for d in snap1 snap2 snap3 work; do
		dmsetup remove "$d" || fail "remove $d"
	done
	load_origin $chunk
	for id in 1 2 3; do
		snapshot_device $id
	done
	for check in "work v1" "snap1 s1" "snap2 v0" "snap3 s3"; do
		set -- $check
		expect_last "/dev/mapper/$1" "/tmp/$2"
	done
	echo "ok: last chunks persist across a reload (chunk $chunk)"

	# A discard of snapshot 1's last chunk (its 6 sectors are all of it)
	# frees it: snapshot 2 keeps the copy of their time, which snapshot 1
	# reads again. Snapshot 3's own last chunk has no such copy: it is freed
	# too, and reads zeroes (its exception stays, naming no chunk).
	private=$(usage_field private_exceptions)
	data=$(usage_field data_chunks)
	blkdiscard -o $((last * 512)) -l 3072 /dev/mapper/snap1 || fail "discard snap1's last chunk"
	blkdiscard -o $((last * 512)) -l 3072 /dev/mapper/snap3 || fail "discard snap3's last chunk"
	[ "$(usage_field private_exceptions)" = $((private - 1)) ] ||
		fail "discards of the last chunks: $private private exceptions, then $(msg usage)"
	n=0
	while [ "$(usage_field data_chunks)" != $((data - 2)) ]; do
		n=$((n + 1))
		[ $n -le 100 ] || fail "discards of the last chunks: $data data chunks, then $(msg usage)"
		sleep 0.1
	done
	dd if=/dev/zero of=/tmp/z6 bs=512 count=6 2>/dev/null
	for check in "work v1" "snap1 v0" "snap2 v0" "snap3 z6"; do
		set -- $check
		expect_last "/dev/mapper/$1" "/tmp/$2"
	done
	store_ok
	echo "ok: a discard of the partial last chunk (chunk $chunk)"

	# A rollback to snapshot 2 copies the last chunk back with the clamped
	# length too: the origin reads v0 there again, the others keep theirs.
	dmsetup remove snap2 || fail "remove snap2"
	msg snapshot rollback 2 || fail "rollback to 2"
	wait_rollback 60
	snapshot_device 2
	for check in "work v0" "snap1 v0" "snap2 v0" "snap3 z6"; do
		set -- $check
		expect_last "/dev/mapper/$1" "/tmp/$2"
	done
	store_ok
	echo "ok: a rollback of the partial last chunk (chunk $chunk)"
	for d in snap1 snap2 snap3 work; do
		dmsetup remove "$d" || fail "remove $d"
	done
done
