"""Datasets: sources, formats, mixes and fingerprints.

Only `fingerprint`, `files` and `formats` are safe at plan time; `inspect` and `peek`
import pyarrow lazily; `load` and `mix` import `datasets` and belong to apply time.
"""
