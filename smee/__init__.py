"""smee: a network-boot server (DHCP, TFTP, HTTP/iPXE) on Twisted."""

__version__ = "0.1.0"
