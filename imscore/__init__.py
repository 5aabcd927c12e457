"""imscore: an IMS-flavoured SIP core (an S-CSCF shaped registrar and forking proxy)."""

__version__ = "0.1.0"
