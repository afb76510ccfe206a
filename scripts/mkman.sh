#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Render the dm-s-snap(7) manual page from the kernel documentation,
# Documentation/admin-guide/device-mapper/shared-snapshot.rst, with rst2man
# (Debian package python3-docutils). `make man` runs it.
#
# usage: mkman.sh [OUTPUT]      (default: $S_SNAP_OUT/man/dm-s-snap.7, out/man/)
#
# The .rst stays as the kernel's documentation wants it; rst2man's man page
# header (name, one-line description, section 7, date) comes from a small
# wrapper document that includes it: its title is replaced by the NAME line,
# the text before its first section becomes DESCRIPTION, and its sections
# become the page's sections. Any rst2man warning is an error.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
RST_REL=Documentation/admin-guide/device-mapper/shared-snapshot.rst
RST=$REPO/$RST_REL
out=${1:-$OUT/man/dm-s-snap.7}
RST2MAN=${RST2MAN:-rst2man}

die() { echo "mkman: error: $*" >&2; exit 1; }
command -v "$RST2MAN" >/dev/null ||
	die "$RST2MAN not found: install python3-docutils (apt-get install python3-docutils, or scripts/setup.sh)"
[ -f "$RST" ] || die "$RST is missing"

# Line numbers (1-based) of the document title's underline and of the first
# section title after it (a text line with a line of "=" under it).
read -r title_end first_section < <(awk '
	function adorn(s) { return s ~ /^=+$/ }
	title_end == 0 && NR > 2 && adorn(prev2) && adorn($0) && prev != "" { title_end = NR }
	title_end && !first && NR > title_end + 1 && adorn($0) && prev != "" && prev2 == "" {
		first = NR - 1
	}
	{ prev2 = prev; prev = $0 }
	END { print title_end + 0, first + 0 }
' "$RST")
[ "$title_end" -gt 0 ] && [ "$first_section" -gt "$title_end" ] ||
	die "$RST_REL: cannot find its title and first section (title ends at line $title_end)"

# The date of the last commit that changed the text, so that the page does
# not change with every build.
date=$(git -C "$REPO" log -1 --format=%cs -- "$RST_REL" 2>/dev/null || true)
[ -n "$date" ] || date=$(date +%F)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# include's :start-line: and :end-line: count lines from 0; :end-line: is
# excluded. The first part is the text between the title and the first
# section, the second everything from the first section on.
cat >"$tmp/dm-s-snap.rst" <<EOF
=========
dm-s-snap
=========

--------------------------------------------------------
device-mapper shared snapshots (s-snap-origin, s-snap)
--------------------------------------------------------

:Manual section: 7
:Manual group: Linux device mapper
:Date: $date
:Version: Linux

Description
===========

.. include:: $RST
   :start-line: $title_end
   :end-line: $((first_section - 1))

.. include:: $RST
   :start-line: $((first_section - 1))

See also
========

**dmsetup**\\ (8), **s-snap-tool**\\ (1), **s-snap-tool-check**\\ (1),
**s-snap-tool-dump**\\ (1); in the kernel tree, $RST_REL.
EOF

mkdir -p "$(dirname "$out")"
"$RST2MAN" --halt=warning --exit-status=warning "$tmp/dm-s-snap.rst" "$tmp/dm-s-snap.7" ||
	die "rst2man failed on $RST_REL (see its messages above)"
mv "$tmp/dm-s-snap.7" "$out"
echo "mkman: wrote $out"
