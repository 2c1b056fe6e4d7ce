"""HTTP/2: the choice of sans-IO core (:mod:`.backend`: h2, or jh2 with the ``speedups``
extra), the connection shared by many greenlets (:mod:`.conn`: reader greenlet, writes,
flow control, PING, GOAWAY, flood limits) and the request path (:mod:`.transport`: streams,
bodies, retries).
"""
