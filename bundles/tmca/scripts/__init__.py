"""TMCA bundle code: the network and its loss. Configs import this package as ``scripts``."""

from . import losses, network
