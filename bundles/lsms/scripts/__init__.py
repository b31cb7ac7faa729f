"""LSMS bundle code: network, Hamburger head, losses."""
