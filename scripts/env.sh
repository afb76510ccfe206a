# SPDX-License-Identifier: GPL-2.0
# Paths shared by the build, VM and test scripts (sourced, not run).

# The kernel cache lives outside the repository; override with S_SNAP_CACHE.
CACHE=${S_SNAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s-snap}
KVERSION=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null | tr '~:' '__')
# S_SNAP_FLAVOR=debug selects the checking kernel, in a tree of its own.
FLAVOR=${S_SNAP_FLAVOR:-}
KTREE="$CACHE/linux-${KVERSION:-unknown}${FLAVOR:+-$FLAVOR}"
MODROOT="$KTREE/.s-snap-modroot"
# Pristine copies of the files patches/ edit, beside the tree (the kernel's rustfmt
# target walks every .rs file inside it).
PRISTINE="$KTREE.pristine"
BZIMAGE="$KTREE/arch/x86/boot/bzImage"
BINDGEN="$HOME/.cargo/bin/bindgen"
# Per-checkout scratch space: initramfs, disk images, logs.
OUT=${S_SNAP_OUT:-$REPO/out${FLAVOR:+/$FLAVOR}}
