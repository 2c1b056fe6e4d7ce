"""greenpool's benchmark suite: peers, floors, ceilings and pool micro-benchmarks.

Run it with ``python -m benchmarks`` (see benchmarks/README.rst).

This package must stay import-free: ``benchmarks.worker`` is run as
``python -m benchmarks.worker`` and monkey-patches before anything else is
imported, so nothing here may import gevent, sockets or a client library.
"""
