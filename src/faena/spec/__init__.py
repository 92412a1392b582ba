"""Pipeline-as-code readers: files in, validated ``PipelineSpec`` out.

Only stdlib and PyYAML are imported here, so ``faena validate`` starts at once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from faena.domain.errors import SpecValidationError, ValidationIssue
from faena.domain.spec import PipelineSpec
from faena.spec.faena_yml import parse_pipeline

if TYPE_CHECKING:
    from pathlib import Path  # pathlib costs ~6 ms to import; validate must start at once

__all__ = ["load_pipeline", "parse_pipeline"]


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read and validate a ``faena.yml``; raises ``SpecValidationError`` with every issue."""
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise _unreadable(filename, "file not found") from None
    except IsADirectoryError:
        raise _unreadable(filename, "is a directory, not a pipeline file") from None
    except UnicodeDecodeError as exc:
        raise _unreadable(filename, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise _unreadable(filename, f"cannot read the file: {exc.strerror or exc}") from None
    return parse_pipeline(text, filename)


def _unreadable(filename: str, message: str) -> SpecValidationError:
    return SpecValidationError(issues=[ValidationIssue(message, file=filename)])
