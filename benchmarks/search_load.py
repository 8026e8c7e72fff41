"""A load generator for ``ucofia-run serve``, run as its own process (so that its threads do not
compete with the measuring process for the GIL): CLIENTS threads, each on one kept-alive
connection, POST search requests of QUERIES queries and top_k TOP_K until REQUESTS each or the
deadline. Prints a JSON summary: statuses, bytes per answer, requests, seconds.

    python benchmarks/search_load.py URL CLIENTS REQUESTS DEADLINE_S QUERIES TOP_K
"""
from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

WORDS = ["a red car", "a dog runs", "someone cooking", "blue sky", "a man talks", "waves on a beach", "a cat sleeps",
         "people dancing"]


def main(argv: list[str]) -> None:
    url, clients, requests, deadline_s, queries, top_k = argv
    parts = urlsplit(url)
    body = json.dumps({"queries": [f"{WORDS[i % len(WORDS)]} {i}" for i in range(int(queries))],
                       "top_k": int(top_k)}).encode()
    statuses: Counter[int] = Counter()
    sizes: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + float(deadline_s)

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        for _ in range(int(requests)):
            if time.monotonic() > deadline:
                break
            conn.request("POST", "/v1/search", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            with lock:
                statuses[reply.status] += 1
                sizes.append(len(data))
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(int(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"statuses": dict(statuses), "requests": len(sizes), "seconds": time.monotonic() - start,
                      "min_bytes": min(sizes, default=0), "max_bytes": max(sizes, default=0)}))


if __name__ == "__main__":
    main(sys.argv[1:])
