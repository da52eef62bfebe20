"""Artifacts: a folder plus manifest.json, written last and atomically.

A folder without a manifest is incomplete by definition, so an interrupted stage can
never be mistaken for a finished one; the pipeline builds each stage in
`<folder>.partial` and renames it into place only after the manifest is on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ArtifactKind = Literal["hf-checkpoint", "onnx", "tensorrt-engine", "edge-bundle"]
MANIFEST = "manifest.json"


@dataclass
class Artifact:
    name: str
    kind: ArtifactKind
    path: Path
    hash: str
    parent: str | None = None
    stage: str = ""
    files: dict[str, str] = field(default_factory=dict)  # role -> file name inside path, e.g. {"model": "model.onnx"}
    metrics: dict[str, Any] = field(default_factory=dict)
    load: str = ""  # the call that opens it (compress.core.models.load_call), for a user of the folder

    def file(self, role: str) -> Path:
        return self.path / self.files[role]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @classmethod
    def load(cls, folder: Path) -> Artifact | None:
        """The artifact in `folder`, or None when it has no manifest (absent or incomplete)."""
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return None
        d = json.loads(manifest.read_text())
        d["path"] = folder
        return cls(**d)


def digest(*parts: object) -> str:
    """A short stable hash of JSON-able parts: step configs, parent hashes, file stamps, benchmark settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def commit(partial: Path, final: Path, artifact: Artifact) -> Artifact:
    """Write the manifest into `partial`, then move it to `final` (replacing a stale one)."""
    artifact.path = final
    write_json_atomic(partial / MANIFEST, {**artifact.to_json(), "path": str(final)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return artifact


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
