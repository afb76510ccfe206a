# SPDX-License-Identifier: GPL-2.0
# vm: disks=2M,160M,160M,64M timeout=600
# Hostile input: corrupted exception stores. A store made by a seeded workload
# is copied to a scratch disk, corrupted one way at a time (bit flips, zeroed
# and random chunks in every kind of metadata block, fields set to hostile
# values with a valid checksum, truncated COW devices, foreign data, another
# chunk size or origin size) and loaded. A load is refused with a reason in the
# kernel log, or the store works with read errors at worst: no silently wrong
# data from checksummed metadata, no kernel warning, every device removable,
# and the module unloads at the end.
. /tests/lib
modprobe dm_s_snap || fail "modprobe dm_s_snap"
printk=$(cat /proc/sys/kernel/printk)
echo 2 >/proc/sys/kernel/printk
# 4 KiB chunks: many B+tree nodes for a small origin.
s-snap-workload run --origin /dev/vda --cow /dev/vdb --chunk-sectors 8 --ops 300 \
	--seed 5 --max-snapshots 4 --hot-blocks 512 || fail "workload"
# Every trial removes its devices, so that leaks show even when a trial failed.
rc=0
s-snap-corrupt --origin /dev/vda --cow /dev/vdb --scratch /dev/vdc --spare /dev/vdd \
	--chunk-sectors 8 --seed 1 || rc=$?
echo "$printk" >/proc/sys/kernel/printk
[ -z "$(dmsetup ls | grep -v 'No devices')" ] || fail "devices left: $(dmsetup ls)"
rmmod dm_s_snap || fail "rmmod dm_s_snap: the module is still in use"
echo "ok: all devices removed, dm_s_snap unloaded"
[ $rc = 0 ] || fail "corrupted stores"
