"""Fetch transformers' own common model tests for tests/test_transformers_common.py (run once, e.g. in .ci/run).

    python tests/fetch_transformers_tests.py [DEST] [--repository]   # DEST: build/transformers-tests (git-ignored)

1. ``pip download --no-deps --no-binary :all: transformers==<installed>``: the sdist ships tests/*.py
   (test_modeling_common.py, test_configuration_common.py, ...), unpacked to DEST/transformers-<version>/tests.
2. The files the sdist lacks but those import (tests/generation/test_utils.py and the generation files it imports,
   tests/exporters/test_export.py, tests/utils/test_configuration_utils.py) come from the transformers repository
   at tag v<version> (raw.githubusercontent.com), only with ``--repository``: the generation and config mixins
   have not been run against this model yet (no GitHub access where it was developed), so CI does not fetch
   them. A file that is not fetched or cannot be downloaded is replaced by a placeholder
   module whose ``HIER_MAMBA_PLACEHOLDER = True`` makes the tests that need it skip (named in the skip reason);
   so is every repository file when test_modeling_common does not import with them (the sdist's tests still run).

Nothing is copied into this repository. Exits 0 even when offline (the tests then skip); prints what it got.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import transformers

RAW = "https://raw.githubusercontent.com/huggingface/transformers/v{version}/tests/{path}"
# repository files the sdist lacks -> the placeholder written when a download fails
REPOSITORY_FILES = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def tests_dir(dest: Path, version: str = transformers.__version__) -> Path:
    return dest / f"transformers-{version}" / "tests"


def fetch(dest: Path, version: str = transformers.__version__, repository: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = tests_dir(dest, version)
    if not (target / "test_modeling_common.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "-d", str(dest)], check=True)
        with tarfile.open(dest / f"transformers-{version}.tar.gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"transformers-{version}/tests/")]
            archive.extractall(dest, members=members, filter="data")
    for package in ("", "generation", "exporters", "utils"):  # importable as a package (pytest's import hooks need it)
        (target / package).mkdir(parents=True, exist_ok=True)
        (target / package / "__init__.py").touch()
    for path, placeholder in REPOSITORY_FILES.items():
        file = target / path
        if file.exists() and "HIER_MAMBA_PLACEHOLDER" not in file.read_text():
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        if not repository:
            _placeholder(file, path, placeholder, "not fetched (the repository files are opt-in: --repository)")
            continue
        try:
            with urllib.request.urlopen(RAW.format(version=version, path=path), timeout=30) as response:
                file.write_bytes(response.read())
            print(f"downloaded tests/{path}")
        except OSError as error:
            _placeholder(file, path, placeholder, f"not downloadable: {error}")
    # A repository file that imports what this environment lacks would stop test_modeling_common from importing:
    # then every repository file becomes a placeholder, so the sdist's tests still run.
    error = _import_error(target)
    if error is not None:
        for path, placeholder in REPOSITORY_FILES.items():
            _placeholder(target / path, path, placeholder, f"does not import here: {error}")
        print(f"after placeholders: {_import_error(target) or 'imports'}")
    return target


def _placeholder(file: Path, path: str, placeholder: str, reason: str) -> None:
    reason = reason.replace("\n", " ")[:300]
    file.write_text(f"HIER_MAMBA_PLACEHOLDER = True  # tests/{path} {reason}\n{placeholder}")
    print(f"placeholder for tests/{path} ({reason})")


def _import_error(target: Path) -> str | None:
    """None when the downloaded test_modeling_common imports (in a fresh interpreter), else the error's last line."""
    code = ("import sys, types, importlib; p = types.ModuleType('transformers_tests'); "
            f"p.__path__ = [{str(target)!r}]; sys.modules['transformers_tests'] = p; "
            "importlib.import_module('transformers_tests.test_modeling_common')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]


if __name__ == "__main__":
    arguments = [argument for argument in sys.argv[1:] if argument != "--repository"]
    root = Path(__file__).resolve().parents[1]
    print(fetch(Path(arguments[0]) if arguments else root / "build" / "transformers-tests",
                repository="--repository" in sys.argv[1:]))
