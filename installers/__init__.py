"""Installers: iPXE script generators chosen per machine (slug → distro → default).

Each installer lives in its own module here and registers itself when imported;
other packages add installers through the ``smee.installers`` entry-point group.
"""
