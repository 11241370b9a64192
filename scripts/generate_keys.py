#!/usr/bin/env python3
"""Write an RS256 key pair for signing dev tokens: `<dir>/jwt.key` (0600) and `<dir>/jwt.pub`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "gateway").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # use this checkout's package, installed or not

from gateway.client.bootstrap import DefaultsHelpFormatter, require_installed  # noqa: E402

require_installed("generate_keys.py", ("jwt", "cryptography"))

from gateway.tokens import generate_keypair  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("keys"), help="output directory")
    parser.add_argument("--name", default="jwt", help="file stem: <name>.key and <name>.pub")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        key_path, pub_path = generate_keypair(args.dir, args.name, force=args.force)
    except FileExistsError as exc:
        print(f"{exc}; use --force to replace it", file=sys.stderr)
        return 1
    print(f"private key: {key_path} (mode 0600)")
    print(f"public key:  {pub_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
