"""Regenerate the checked-in gRPC stubs from proto/inference.proto (`make proto`).

The stubs are checked in so that the agent node can import them without grpcio-tools or mlx.
`tests/test_proto.py` fails when they drift from the proto.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
PROTO = API_DIR.parent.parent / "proto" / "inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the proto into `out_dir`, with imports made package-relative."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO.parent}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    grpc_file = out_dir / "inference_pb2_grpc.py"
    text = grpc_file.read_text()
    text = re.sub(r"^import inference_pb2 as", "from . import inference_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)
    return [out_dir / name for name in GENERATED]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (API_DIR / path.name).write_text(path.read_text())
            print(f"wrote {API_DIR / path.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
