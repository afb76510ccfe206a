# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: a COW device holding something that is not a store is refused and
# left untouched.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
mkfs.ext4 -q /dev/vdb || fail "mkfs"
before=$(sha256sum /dev/vdb | cut -d' ' -f1)
n=$(blockdev --getsz /dev/vda)
expect_fail "ext4 as COW" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 16"
expect_log "COW device holds data that is not an exception store: refusing to use it"
dd if=/dev/urandom of=/dev/vdb bs=4k count=4 conv=notrunc 2>/dev/null
before=$(sha256sum /dev/vdb | cut -d' ' -f1)
expect_fail "random data as COW" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 16"
[ "$(sha256sum /dev/vdb | cut -d' ' -f1)" = "$before" ] || fail "the COW device was written"
echo "ok: COW device untouched"
