# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Proof of the harness: a Rust module of this build loads and unloads, and a
# dm-linear device made with the real dmsetup stores data where it should.
. /tests/lib

modprobe rust_minimal || fail "cannot load the Rust sample module"
dmesg | grep -q "Rust minimal sample (init)" || fail "the Rust module did not run"
rmmod rust_minimal || fail "cannot unload the Rust sample module"

# 64 MiB disk, linear map of 32 MiB starting 8 MiB into it.
echo "0 65536 linear /dev/vdb 16384" | dmsetup create lin || fail "dmsetup create"
[ "$(blockdev --getsize /dev/mapper/lin)" = 65536 ] || fail "wrong device size"
dmsetup table lin | grep -qx "0 65536 linear $(cat /sys/block/vdb/dev) 16384" ||
	fail "table: $(dmsetup table lin)"

dd if=/dev/urandom of=/tmp/data bs=4096 count=256 2>/dev/null
dd if=/tmp/data of=/dev/mapper/lin bs=4096 seek=100 oflag=direct conv=fsync 2>/dev/null ||
	fail "write through dm-linear"
same_bytes /tmp/data /dev/mapper/lin 0 100 256 || fail "read back through dm-linear"
# 8 MiB offset = 2048 blocks of 4 KiB.
same_bytes /tmp/data /dev/vdb 0 2148 256 || fail "data not at the mapped offset of the disk"
dmsetup remove lin || fail "dmsetup remove"
echo "harness-linear: ok"
