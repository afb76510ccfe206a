# SPDX-License-Identifier: GPL-2.0
# vm: disks=256M,256M timeout=600
# ext4 on the origin: a snapshot taken with the origin suspended holds the old
# files and passes e2fsck, the origin holds the new ones.
. /tests/lib
load_origin
mkfs.ext4 -q /dev/mapper/work || fail "mkfs"
mkdir -p /mnt/o /mnt/s
mount /dev/mapper/work /mnt/o || fail "mount origin"
for i in 1 2 3 4 5; do
	dd if=/dev/urandom of=/mnt/o/file$i bs=64k count=$((i * 4)) 2>/dev/null
done
sha256sum /mnt/o/file* | sed 's|/mnt/o/||' >/tmp/old.sum
sync
dmsetup suspend work || fail "suspend"
msg snapshot create 1 || fail "create"
dmsetup resume work || fail "resume"
for i in 1 3 5; do
	dd if=/dev/urandom of=/mnt/o/file$i bs=64k count=8 conv=notrunc 2>/dev/null
done
rm /mnt/o/file2
echo new >/mnt/o/file6
sync
sha256sum /mnt/o/file* | sed 's|/mnt/o/||' >/tmp/new.sum
snapshot_device 1
e2fsck -fn /dev/mapper/snap1 || fail "e2fsck -n on the snapshot"
mount -o ro,noload /dev/mapper/snap1 /mnt/s || fail "mount snapshot"
(cd /mnt/s && sha256sum file*) | cmp - /tmp/old.sum || fail "snapshot files differ from the old ones"
(cd /mnt/o && sha256sum file*) | cmp - /tmp/new.sum || fail "origin files differ from the new ones"
umount /mnt/s
umount /mnt/o
e2fsck -fn /dev/mapper/work || fail "e2fsck -n on the origin"
dmsetup remove snap1
dmsetup remove work
echo "ext4: snapshot holds the old files, origin the new ones"
