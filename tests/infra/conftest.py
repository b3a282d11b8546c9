"""Shared helpers for the infrastructure checks: parse the repository's HCL
(Terraform modules, the Packer template) into plain Python data.

Strings come back without their quotes; references and expressions come back
as their source text wrapped in ``${...}`` (python-hcl2's rendering), so a test
compares them as text, e.g. ``"${var.cluster_arn}"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import hcl2
import pytest
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
MODULES = TERRAFORM / "modules"
AMI = REPO / "ami"

_OPTIONS = SerializationOptions(
    with_comments=False,
    explicit_blocks=False,
    strip_string_quotes=True,
    preserve_heredocs=False,
)


def load_hcl(path: Path) -> dict[str, Any]:
    """Parse one HCL file."""
    with path.open(encoding="utf-8") as fh:
        return hcl2.load(fh, serialization_options=_OPTIONS)


class HclDir:
    """All ``*.tf`` (or ``*.pkr.hcl``) files of one directory, merged."""

    def __init__(self, directory: Path, pattern: str = "*.tf") -> None:
        self.directory = directory
        self.files = sorted(directory.glob(pattern))
        if not self.files:
            raise FileNotFoundError(f"no {pattern} in {directory}")
        self.blocks: dict[str, list[Any]] = {}
        for f in self.files:
            for kind, items in load_hcl(f).items():
                self.blocks.setdefault(kind, []).extend(items)

    def _labelled(self, kind: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for item in self.blocks.get(kind, []):
            for type_, named in item.items():
                for name, body in named.items():
                    yield type_, name, body

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        """Resources of one type by name."""
        return {n: b for t, n, b in self._labelled("resource") if t == type_}

    def resource(self, type_: str, name: str) -> dict[str, Any]:
        found = self.resources(type_)
        assert name in found, f"{self.directory.name}: no resource {type_}.{name}"
        return found[name]

    def data(self, type_: str, name: str) -> dict[str, Any]:
        found = {n: b for t, n, b in self._labelled("data") if t == type_}
        assert name in found, f"{self.directory.name}: no data {type_}.{name}"
        return found[name]

    def locals(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for item in self.blocks.get("locals", []):
            merged.update(item)
        return merged

    def modules(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for item in self.blocks.get("module", []):
            merged.update(item)
        return merged

    def sources(self) -> dict[str, dict[str, Any]]:
        """Packer ``source "type" "name"`` blocks, keyed ``type.name``."""
        return {f"{t}.{n}": b for t, n, b in self._labelled("source")}


def one(block: Any) -> dict[str, Any]:
    """A nested block (``metadata_options { ... }``) parses as a list of one."""
    if isinstance(block, list):
        assert len(block) == 1, f"expected one block, got {len(block)}"
        return block[0]
    assert isinstance(block, dict), f"expected a block, got {block!r}"
    return block


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="session")
def module():
    """``module("workspace")`` → the parsed terraform/modules/workspace."""
    cache: dict[str, HclDir] = {}

    def get(name: str) -> HclDir:
        if name not in cache:
            cache[name] = HclDir(MODULES / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def packer() -> HclDir:
    return HclDir(AMI, "*.pkr.hcl")


def pytest_report_header(config: pytest.Config) -> str:
    return f"berth infra checks: repo {REPO} (python-hcl2 {hcl2.__version__ if hasattr(hcl2, '__version__') else '?'}), cwd {os.getcwd()}"
