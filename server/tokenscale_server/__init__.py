"""tokenscale_server: the included continuous-batching server."""
