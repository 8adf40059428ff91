"""Model mechanics: families, streamed checkpoint I/O, branch, merge, router, export."""
