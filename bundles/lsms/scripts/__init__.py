"""LSMS bundle code: network, Hamburger head, losses."""

from . import hamburger, losses, network
