"""File jobs several modules share: a file's digest, and a JSON file written whole."""

import hashlib
import json
from pathlib import Path


def file_digest(path, algorithm="md5"):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def write_json(path, data, indent=2):
    """Under a temporary name first: a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n")
    tmp.replace(path)
