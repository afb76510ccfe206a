# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# A COW device grown after the store was formatted: the store keeps the size
# it was formatted with, its snapshots stay intact, and the table load says
# how much of the device it uses.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
# 32 MiB of the 64 MiB COW disk, 64 KiB chunks: 512 chunks.
dmsetup create cow --table "0 65536 linear /dev/vdb 0" || fail "cow slice"
dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/mapper/cow S 128" || fail "load"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=8 oflag=direct 2>/dev/null
msg snapshot create 1 || fail "create"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=8 oflag=direct 2>/dev/null
[ "$(usage_field total_chunks)" = 512 ] || fail "usage: $(msg usage)"
dmsetup remove work
# Grow the COW slice to the whole disk and load again.
dmsetup reload cow --table "0 131072 linear /dev/vdb 0" && dmsetup resume cow || fail "grow"
dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/mapper/cow S 128" || fail "reload"
expect_log "the exception store uses 512 of the COW device's 1024 chunks"
[ "$(usage_field total_chunks)" = 512 ] || fail "usage after growth: $(msg usage)"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "1 1" ] || fail "status: $(dmsetup status work)"
dmsetup remove work
dmsetup remove cow
echo "ok: the store keeps its size and says so"
