"""Running a function in a forked child from a test: what every fork test needs.

``fork_and_report(fn)`` forks; the child runs ``fn()``, writes its JSON-able result (or
``{"error": repr(e)}``) to a pipe and leaves with ``os._exit`` (never returning into pytest);
the parent reads the pipe on the hub's threadpool (so its own greenlets keep running while
the child works) and returns what the child wrote, ``None`` when it wrote nothing.
"""
import json
import os

import gevent


def fork_and_report(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps({"error": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = gevent.get_hub().threadpool.apply(os.read, (r, 65536))
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b"null")


def child_report(report):
    """The child's report, after checking the child finished without an error."""
    assert report is not None and "error" not in report, report
    return report
