"""Weir's state layer: key groups and (from the state issue on) the RocksDB backend.

`state` imports neither `operators` nor `service`: it is the bottom of the
`service → operators → state` dependency chain.
"""
