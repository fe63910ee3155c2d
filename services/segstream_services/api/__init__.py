"""``segstream serve``: the HTTP read API for services that are not written in Python."""
