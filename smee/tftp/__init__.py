"""TFTP server (RFC 1350 with the 2347/2348/2349/7440 options): read-only, for iPXE binaries."""
