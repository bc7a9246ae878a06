"""Weir's state layer: key groups, the state layout, the RocksDB store, epoch buffers.

`weir.state` imports neither `weir.operators` nor `weir.service`: it is the bottom of
the `service → operators → state` dependency chain.
"""
