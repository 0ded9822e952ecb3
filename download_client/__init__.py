"""`download-client`: the download service from a terminal, over HTTP only."""
