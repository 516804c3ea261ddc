"""twistd plugin for smee.

Kept to one lazy ``ServiceMaker``: ``twistd --help`` imports every plugin
module, so nothing heavy (or fallible) may be imported here.
"""

from twisted.application.service import ServiceMaker

smee = ServiceMaker(
    "smee",
    "smee.tap",
    "Network-boot server: DHCP, TFTP and HTTP/iPXE for bare-metal provisioning.",
    "smee",
)
