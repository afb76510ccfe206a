# SPDX-License-Identifier: GPL-2.0
# vm: disks=1M
# Not part of the suite: a test that passes but makes the kernel print a
# WARNING (through LKDTM), which must make the run fail.
modprobe lkdtm
echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT
echo "this test passes, but the kernel warned"
exit 0
