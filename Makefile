# smee's make targets. The work is in scripts/, so that a machine without make
# can run the same thing (scripts/bindata) directly.

.PHONY: bindata

# Fetch Debian's iPXE build (pinned by version and sha256) into ipxe/bin.
# A no-op when ipxe/bin is already up to date; see ipxe/README.md.
bindata:
	scripts/bindata
