# SPDX-License-Identifier: GPL-2.0
# vm: disks=1M
# Not part of the suite: a guest test that fails, which must make the run fail.
echo "this test fails on purpose"
exit 3
