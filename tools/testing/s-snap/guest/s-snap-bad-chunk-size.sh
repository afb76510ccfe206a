# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: chunk sizes that are not a power of two from 8 to 1024 sectors.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
for c in 0 4 12 2048 -16 16k abc 99999999999; do
	expect_fail "chunk size $c" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S $c"
done
expect_log "Invalid chunk size: a power of two from 8 to 1024 sectors"
# And the store keeps the chunk size it was made with.
load_origin 16
dmsetup remove work
expect_fail "reload with another chunk size" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb S 32"
expect_log "Chunk size differs from the one the exception store was created with"
