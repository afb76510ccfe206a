# SPDX-License-Identifier: GPL-2.0
# vm: disks=4M,32M,4M,4M,16K timeout=600
# Hostile input: seeded fuzzing of s-snap-origin and s-snap table lines and of
# dmsetup messages through the real dmsetup. Every case ends in time, accepted
# or refused with a reason in the kernel log; the answers the documentation
# fixes are checked (message grammar and errors, table syntax); the live origin
# and its snapshots keep working and keep their data; nothing is left behind
# and the module unloads.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
# Thousands of refusals log errors: keep them off the slow serial console (the
# kernel log keeps them, and s-snap-fuzz watches it for problems as it goes).
printk=$(cat /proc/sys/kernel/printk)
echo 2 >/proc/sys/kernel/printk
s-snap-fuzz --seed 1 --tables 300 --mutations 600 --messages 1200 || fail "fuzz"
echo "$printk" >/proc/sys/kernel/printk
[ -z "$(dmsetup ls | grep -v 'No devices')" ] || fail "devices left: $(dmsetup ls)"
rmmod dm_s_snap || fail "rmmod dm_s_snap: the module is still in use"
echo "ok: all devices removed, dm_s_snap unloaded"
