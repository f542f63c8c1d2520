"""Vehicles of possible interest on the device: the signed hotlist bundle and the matcher.

The collector compiles the approved, unexpired entries into a bundle and signs it (Ed25519); a
device holds the collector's public key from provisioning and installs a bundle only when its
signature holds and its version is newer than the one it has. The bundle names no plate: each entry
is a keyed hash (BLAKE2b, 8 bytes, a key drawn afresh for every version) of its plate, and of its
look-alike key (edge.plates.fold) when the entry matches look-alikes. The key travels with the
bundle, so someone holding a stolen device can still test guesses one at a time; what the device
does not give away is a list to read.

Matching a read: its exact text, then its look-alike key, then (entries that match look-alikes,
reads and plates of five characters or more) every text one edit away from its look-alike key (one character
wrong, missing or extra), about 450 hashes a read.

On the wire (MQTT, retained, QoS 1; only collectors may write, only the device may read):
    <prefix>/<device_id>/hotlist/manifest   the signed manifest: JSON, a newline, the base64 signature
    <prefix>/<device_id>/hotlist/part/<n>   the entry table, in parts of at most PART_BYTES
A manifest lists the SHA-256 of each part; a device installs a bundle once it holds them all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.plates import fold
from edge.record import ALERT_SCHEMA_ID, MatchKind

SCHEMA = "lpr.hotlist/1"
ALERT_SCHEMA = ALERT_SCHEMA_ID
PART_BYTES = 256 * 1024  # well under the broker's packet limit
MAX_PARTS = 64  # 16 MiB of entries: 670,000 of them
ENTRY = struct.Struct(">4sIB8s8s")  # entry id, expires (Unix s), flags, hash of the plate, hash of its look-alike key
FLAG_LOOKALIKE = 1
ONE_EDIT_MIN_CHARS = 5  # reads and plates shorter than this match exactly or by look-alike only: too many plates are one edit away
# the characters a look-alike key is written in: A-Z and 0-9 less the letters fold() turns into digits
FOLDED_ALPHABET = "".join(sorted(set(fold("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))))
MATCH_KINDS = ("exact", "look-alike", "one-edit")


class BundleError(Exception):
    """A bundle refused: the reason, one line."""


def entry_hash(key: bytes, tag: bytes, text: str) -> bytes:
    return hashlib.blake2b(tag + text.encode(), key=key, digest_size=8).digest()


def entry_id_bytes(entry_id: str) -> bytes:
    if not (entry_id.startswith("HL-") and len(entry_id) == 11):
        raise ValueError(f"not a hotlist entry id: {entry_id!r}")
    return bytes.fromhex(entry_id[3:])


_ALPHABET_BYTES = [c.encode() for c in FOLDED_ALPHABET]


def one_edit(text: bytes) -> Iterator[bytes]:
    """Every text one substitution, deletion or insertion away from `text` (in FOLDED_ALPHABET), an
    insertion beside the same character once only."""
    n = len(text)
    for i in range(n):
        head, tail, own = text[:i], text[i + 1 :], text[i : i + 1]
        yield head + tail
        for c in _ALPHABET_BYTES:
            if c != own:
                yield head + c + tail
    for i in range(n + 1):
        head, tail = text[:i], text[i:]
        prev = text[i - 1 : i]
        for c in _ALPHABET_BYTES:
            if c != prev:  # inserting X after an X is inserting it before: once is enough
                yield head + c + tail


@dataclass(frozen=True)
class Entry:
    """One approved entry as the collector compiles it."""

    entry_id: str
    plate: str
    lookalike: bool
    expires_s: int


def compile_bundle(entries: Iterable[Entry], version: int, scope: str, signing_key, created_ms: int | None = None,
                   hash_key: bytes | None = None) -> tuple[bytes, list[bytes]]:
    """(signed manifest, parts) of a bundle. `signing_key`: an Ed25519 private key."""
    key = hash_key or os.urandom(32)
    rows = []
    for e in entries:
        flags = FLAG_LOOKALIKE if e.lookalike else 0
        fh = entry_hash(key, b"f", fold(e.plate)) if e.lookalike else b"\0" * 8
        rows.append(ENTRY.pack(entry_id_bytes(e.entry_id), int(e.expires_s), flags, entry_hash(key, b"x", e.plate), fh))
    rows.sort(key=lambda r: r[9:17])  # by hash: the order tells nothing about when an entry was made
    table = b"".join(rows)
    parts = [table[i : i + PART_BYTES] for i in range(0, len(table), PART_BYTES)] or [b""]
    if len(parts) > MAX_PARTS:
        raise BundleError(f"{len(rows)} entries are more than a bundle carries ({MAX_PARTS * PART_BYTES // ENTRY.size})")
    body = {"schema": SCHEMA, "version": int(version), "scope": scope, "created_ms": int(created_ms or time.time() * 1000),
            "entries": len(rows), "hash_key": base64.b64encode(key).decode(),
            "parts": [hashlib.sha256(p).hexdigest() for p in parts]}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return raw + b"\n" + base64.b64encode(signing_key.sign(raw)), parts


def read_manifest(data: bytes, public_key) -> dict:
    """The manifest's body if its signature holds, else BundleError."""
    from cryptography.exceptions import InvalidSignature

    raw, sep, sig = data.rpartition(b"\n")
    if not sep:
        raise BundleError("not a hotlist manifest (no signature)")
    try:
        public_key.verify(base64.b64decode(sig, validate=True), raw)
    except (InvalidSignature, ValueError):
        raise BundleError("the manifest's signature does not verify with the collector's public key") from None
    try:
        body = json.loads(raw)
        ok = (body.get("schema") == SCHEMA and isinstance(body.get("version"), int) and isinstance(body.get("parts"), list)
              and 0 < len(body["parts"]) <= MAX_PARTS and isinstance(body.get("entries"), int))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise BundleError(f"a signed manifest this device does not understand (expected {SCHEMA})")
    return body


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise BundleError(f"hotlist public key {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"hotlist public key {path}: not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Match:
    entry_id: str
    kind: MatchKind


class Bundle:
    """An installed bundle: a verified manifest and its entry table, ready to match reads."""

    def __init__(self, manifest: bytes, parts: list[bytes], public_key):
        body = read_manifest(manifest, public_key)
        if len(parts) != len(body["parts"]):
            raise BundleError(f"the bundle has {len(body['parts'])} parts, {len(parts)} were given")
        for i, (p, digest) in enumerate(zip(parts, body["parts"], strict=True)):
            if hashlib.sha256(p).hexdigest() != digest:
                raise BundleError(f"part {i} is not the one the manifest signed")
        table = b"".join(parts)
        if len(table) != body["entries"] * ENTRY.size:
            raise BundleError("the entry table's length does not match the manifest")
        self.manifest, self.parts = manifest, parts
        self.version, self.scope, self.entries = int(body["version"]), str(body.get("scope", "")), int(body["entries"])
        self.key = base64.b64decode(body["hash_key"])
        self._base = hashlib.blake2b(b"f", key=self.key, digest_size=8)
        self.ids: list[str] = []
        self.expires: list[int] = []
        self.exact: dict[bytes, list[int]] = {}
        self.folded: dict[bytes, list[int]] = {}
        for i, (eid, exp, flags, xh, fh) in enumerate(ENTRY.iter_unpack(table)):
            self.ids.append("HL-" + eid.hex())
            self.expires.append(exp)
            self.exact.setdefault(xh, []).append(i)
            if flags & FLAG_LOOKALIKE:
                self.folded.setdefault(fh, []).append(i)

    def _live(self, idx: list[int] | None, now_s: float) -> int | None:
        for i in idx or ():
            if self.expires[i] > now_s:
                return i
        return None

    def match(self, text: str, now_s: float | None = None) -> Match | None:
        """The best match of a read's text among the entries still in force (expiry holds here too)."""
        now = time.time() if now_s is None else now_s
        i = self._live(self.exact.get(entry_hash(self.key, b"x", text)), now)
        if i is not None:
            return Match(self.ids[i], "exact")
        if not self.folded:
            return None
        f = fold(text)
        i = self._live(self.folded.get(entry_hash(self.key, b"f", f)), now)
        if i is not None:
            return Match(self.ids[i], "look-alike")
        if len(f) < ONE_EDIT_MIN_CHARS:
            return None
        # the hot loop (about 450 variants): one keyed state copied per variant, bytes throughout
        folded, base, fb = self.folded, self._base, f.encode()
        for v in one_edit(fb):
            if len(v) >= ONE_EDIT_MIN_CHARS:
                h = base.copy()
                h.update(v)
                idx = folded.get(h.digest())
                if idx is not None:
                    i = self._live(idx, now)
                    if i is not None:
                        return Match(self.ids[i], "one-edit")
        return None

    # ---------------------------------------------------------- on disk

    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack(">I", len(self.manifest)) + self.manifest)
            for p in self.parts:
                f.write(struct.pack(">I", len(p)) + p)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, public_key) -> Bundle:
        data = Path(path).read_bytes()
        chunks, i = [], 0
        while i + 4 <= len(data):
            n = struct.unpack(">I", data[i : i + 4])[0]
            chunks.append(data[i + 4 : i + 4 + n])
            i += 4 + n
        if not chunks or i != len(data):
            raise BundleError(f"{path} is not a saved hotlist bundle")
        return cls(chunks[0], chunks[1:], public_key)


class Receiver:
    """Assembles bundles from the retained MQTT messages, in whatever order they come: a manifest
    is checked at once (signature, version), and the bundle installed when every part it lists has
    arrived. `refused` counts what was turned away, by reason."""

    def __init__(self, public_key, installed: Bundle | None = None):
        self.public_key = public_key
        self.bundle = installed
        self._pending: tuple[bytes, dict] | None = None
        self._parts: dict[int, bytes] = {}
        self.refused: dict[str, int] = {}
        self.last_refusal = ""

    @property
    def version(self) -> int:
        return self.bundle.version if self.bundle else 0

    def _refuse(self, why: str) -> None:
        self.refused[why.split(":")[0]] = self.refused.get(why.split(":")[0], 0) + 1
        self.last_refusal = why

    def manifest(self, data: bytes) -> Bundle | None:
        try:
            body = read_manifest(data, self.public_key)
        except BundleError as e:
            self._refuse(f"bad signature: {e}")
            return None
        if self.bundle and data == self.bundle.manifest:
            return None  # the retained copy of what is installed, again
        if body["version"] <= self.version:
            self._refuse(f"old version: bundle {body['version']} is not newer than the installed {self.version}")
            return None
        self._pending = (data, body)
        return self._try()

    def part(self, index: int, data: bytes) -> Bundle | None:
        if not 0 <= index < MAX_PARTS or len(data) > PART_BYTES:
            self._refuse(f"bad part: part {index} out of bounds")
            return None
        self._parts[index] = data
        return self._try()

    def _try(self) -> Bundle | None:
        if self._pending is None:
            return None
        data, body = self._pending
        digests = body["parts"]
        have = [self._parts.get(i) for i in range(len(digests))]
        if any(p is None or hashlib.sha256(p).hexdigest() != d for p, d in zip(have, digests, strict=True)):
            return None  # still waiting for a part of this version
        try:
            b = Bundle(data, [p for p in have if p is not None], self.public_key)
        except BundleError as e:
            self._refuse(f"bad bundle: {e}")
            self._pending = None
            return None
        self.bundle, self._pending = b, None
        return b
