"""Add files to a built wheel in place, with their RECORD lines (sha256, size).

    python scripts/add_to_wheel.py WHEEL DIR_IN_WHEEL FILE...

scripts/build_engine.sh adds llama.cpp's CPU backend variants to llama-cpp-python's
wheel this way, so pip installs and uninstalls them with it.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def add(wheel: Path, directory: str, files: list[Path]) -> None:
    with zipfile.ZipFile(wheel) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    names = {f"{directory.rstrip('/')}/{f.name}": f.read_bytes() for f in files}
    out = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in entries:
            if info.filename in names:
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [
                    line
                    for line in data.decode().splitlines()
                    if line and line.split(",", 1)[0] not in names
                ]
                lines[-1:-1] = [record_line(name, blob) for name, blob in names.items()]
                data = ("\n".join(lines) + "\n").encode()
            zout.writestr(info, data)
        for name, blob in names.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, blob)
    out.replace(wheel)


if __name__ == "__main__":
    add(Path(sys.argv[1]), sys.argv[2], [Path(p) for p in sys.argv[3:]])
