"""tokenscale_server: the included continuous-batching server."""

__version__ = "0.1.0"
