"""HTTP/1.1: the sans-IO connection (:mod:`.conn`: the interface, events and shared rules)
over two interchangeable parser backends (:mod:`.parser_h11` over h11, always installed;
:mod:`.parser_httptools` over llhttp, the ``speedups`` extra), and one exchange over an
exclusive pooled connection (:mod:`.transport`).
"""
