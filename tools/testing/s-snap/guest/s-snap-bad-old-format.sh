# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: a store of format version 1 (one metadata block per chunk) is
# refused as an unsupported version and left untouched. With 64 KiB chunks its
# second superblock is not at 4 KiB, where version 2 looks for it: taking the
# zeros there for an unfinished format would format the store again.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
# The first bytes of a version 1 superblock: magic "SSsb" at 4, version 1 at
# 24, 128-sector chunks at 28, sequence number 7 at 32.
printf '\0\0\0\0SSsb\0\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\1\0\0\0\200\0\0\0\7\0\0\0\0\0\0\0' |
	dd of=/dev/vdb bs=40 count=1 conv=notrunc 2>/dev/null || fail "write the superblock"
before=$(sha256sum /dev/vdb | cut -d' ' -f1)
expect_fail "version 1 store" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 128"
expect_log "Exception store has an unsupported format version"
[ "$(sha256sum /dev/vdb | cut -d' ' -f1)" = "$before" ] || fail "the version 1 store was written"
echo "ok: version 1 store refused and untouched"
