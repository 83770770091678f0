"""One module per source format; each returns a :class:`thinkrec.data.Dataset`."""
