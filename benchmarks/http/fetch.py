"""Fetch every path once from one HTTP server and save the bodies (run by bench_http.py).

Runs inside the client namespace, so the check goes over the same veth as the load.
Usage: fetch.py BASE_URL PATHS_FILE OUT_DIR -> prints JSON {path: status} on stdout;
bodies go to OUT_DIR/<path>. One keep-alive connection, bounded by a timeout per request.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit


def main(base: str, paths_file: str, out_dir: str) -> int:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
    statuses: dict[str, int] = {}
    out = Path(out_dir)
    for path in Path(paths_file).read_text().split():
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        statuses[path] = resp.status
        dest = out / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(body)
        if resp.will_close:
            conn.close()
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
    conn.close()
    json.dump(statuses, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
