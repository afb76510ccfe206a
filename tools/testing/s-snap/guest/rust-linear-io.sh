# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# The Rust "rust-linear" sample target maps like the C "linear" target: same
# table and status lines, data written through it lands at the offset and
# reads back identically through both targets; suspend/resume, a file system
# and module unload work.
. /tests/lib

modprobe rust_dm_linear || fail "cannot load rust_dm_linear"
dmsetup targets | grep -q "^rust-linear *v1.0.0" || fail "target not registered: $(dmsetup targets)"
dev=$(cat /sys/block/vdb/dev)

# 32 MiB (65536 sectors) starting 8 MiB (16384 sectors) into vdb, with both targets.
echo "0 65536 rust-linear /dev/vdb 16384" | dmsetup create rlin || fail "dmsetup create rust-linear"
echo "0 65536 linear /dev/vdb 16384" | dmsetup create clin || fail "dmsetup create linear"
[ "$(blockdev --getsize /dev/mapper/rlin)" = 65536 ] || fail "wrong device size"

# Table and status: literally the C target's, with the type name swapped.
rt=$(dmsetup table rlin) ct=$(dmsetup table clin)
echo "table:  $rt"
[ "$rt" = "0 65536 rust-linear $dev 16384" ] || fail "unexpected table '$rt'"
[ "$rt" = "$(echo "$ct" | sed 's/ linear / rust-linear /')" ] || fail "table '$rt' differs from C '$ct'"
rs=$(dmsetup status rlin) cs=$(dmsetup status clin)
echo "status: '$rs'"
[ "$rs" = "$(echo "$cs" | sed 's/ linear/ rust-linear/')" ] || fail "status '$rs' differs from C '$cs'"

# Random data through rust-linear at block 100 of the mapping.
dd if=/dev/urandom of=/tmp/data bs=4096 count=256 2>/dev/null
dd if=/tmp/data of=/dev/mapper/rlin bs=4096 seek=100 oflag=direct conv=fsync 2>/dev/null ||
	fail "write through rust-linear"
same_bytes /tmp/data /dev/mapper/rlin 0 100 256 || fail "read back through rust-linear"
same_bytes /tmp/data /dev/mapper/clin 0 100 256 || fail "read back through C linear"
# 8 MiB offset = 2048 blocks of 4 KiB.
same_bytes /tmp/data /dev/vdb 0 2148 256 || fail "data not at the mapped offset of vdb"

# The other way round, through the page cache (buffered write, flush).
dd if=/dev/urandom of=/tmp/data2 bs=4096 count=64 2>/dev/null
dd if=/tmp/data2 of=/dev/mapper/clin bs=4096 seek=5000 conv=fsync 2>/dev/null || fail "write through C linear"
same_bytes /tmp/data2 /dev/mapper/rlin 0 5000 64 || fail "C linear data not seen through rust-linear"
# The last block of the mapping (8191) and nothing beyond it.
dd if=/tmp/data of=/dev/mapper/rlin bs=4096 seek=8191 count=1 oflag=direct 2>/dev/null || fail "write last block"
same_bytes /tmp/data /dev/vdb 0 10239 1 || fail "last block not at the end of the range"
expect_fail "write past the end" dd if=/tmp/data of=/dev/mapper/rlin bs=4096 seek=8192 count=1 oflag=direct

# Suspend and resume with I/O around it, then a file system on top.
dmsetup suspend rlin || fail "suspend"
dmsetup info rlin | grep -q SUSPENDED || fail "not suspended"
dmsetup resume rlin || fail "resume"
same_bytes /tmp/data /dev/mapper/rlin 0 100 256 || fail "data changed across suspend/resume"
dmsetup remove clin || fail "remove C linear"
mkfs.ext4 -q -F /dev/mapper/rlin || fail "mkfs.ext4 on rust-linear"
mkdir -p /mnt/r
mount -t ext4 /dev/mapper/rlin /mnt/r || fail "mount"
cp /tmp/data /mnt/r/file || fail "copy into the file system"
umount /mnt/r || fail "umount"
mount -t ext4 /dev/mapper/rlin /mnt/r || fail "mount again"
cmp /tmp/data /mnt/r/file || fail "file content"
umount /mnt/r || fail "umount"
e2fsck -fn /dev/mapper/rlin >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck"; }

# A table with two rust-linear targets over both disks (vdb, vda).
printf '0 1024 rust-linear /dev/vdb 0\n1024 1024 rust-linear /dev/vda 2048\n' | dmsetup create two ||
	fail "dmsetup create with two targets"
dmsetup table two | grep -qx "1024 1024 rust-linear $(cat /sys/block/vda/dev) 2048" || fail "table of two: $(dmsetup table two)"
dd if=/tmp/data of=/dev/mapper/two bs=4096 seek=126 count=4 oflag=direct 2>/dev/null || fail "write across targets"
same_bytes /tmp/data /dev/vdb 0 126 2 || fail "first half of the write"
same_bytes /tmp/data /dev/vda 2 256 2 || fail "second half of the write (vda offset 1 MiB)"
dmsetup remove two || fail "remove two"

dmsetup remove rlin || fail "dmsetup remove"
rmmod rust_dm_linear || fail "rmmod rust_dm_linear"
if grep -q rust_dm_linear /proc/modules; then fail "module still loaded"; fi
echo "rust-linear-io: ok"
