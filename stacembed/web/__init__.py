"""The `stacembed explore` map page: a local, offline web server over an embeddings catalog."""

from .server import Explorer, make_server, serve

__all__ = ["Explorer", "make_server", "serve"]
