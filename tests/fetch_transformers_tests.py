"""Fetch transformers' own common model tests for tests/test_transformers_common.py (run once, e.g. in .ci/run).

    python tests/fetch_transformers_tests.py [DEST] [--repository[=REF]]   # DEST: build/transformers-tests (ignored)

1. ``pip download --no-deps --no-binary :all: transformers==<installed>``: the sdist ships tests/*.py
   (test_modeling_common.py, test_configuration_common.py, ...), unpacked to DEST/transformers-<version>/tests.
2. The files the sdist lacks but those import (tests/generation/test_utils.py, tests/exporters/test_export.py,
   tests/utils/test_configuration_utils.py and the utils/test_module/custom_configuration.py it imports) come from
   the transformers repository (raw.githubusercontent.com), only with ``--repository``: at REF, by default the
   commit verified for the installed release (VERIFIED_REF), else the tag v<version>. test_configuration_utils
   imports ``httpx``. A file that is not fetched or cannot be downloaded is replaced by a placeholder module whose
   ``HIER_MAMBA_PLACEHOLDER = True`` makes the tests that need it skip (named in the skip reason); so is every
   repository file when test_modeling_common does not import with them (the sdist's tests still run).

Verified (transformers 5.24.0, torch 2.13.0+cpu, CPU): the repository files at commit
decba1d2ea4ed3cbf0495d1828abad4b2dba1846 (2026-08-19, 5.16.0.dev0; the v5.24.0 tag's files were not reachable;
blobs: generation/test_utils.py 6c2b23fe, exporters/test_export.py 10c10d3d, utils/test_configuration_utils.py
f12e873d) with the 5.24.0 sdist. ``pytest tests/test_transformers_common.py``: 212 passed, 272 skipped, 0 failed;
per test function (one whose every subtest skips counted as skipped; 232 in all) and per mixer (mamba2, mamba1:
the same counts), passed / skipped: ModelTesterMixin 75 / 85, GenerationTesterMixin 25 / 27, ExportTesterMixin
0 / 6, ExportGenerateTesterMixin 0 / 12, ConfigTester 1 / 0, the Mamba2-style multi-GPU skip 0 / 1. transformers'
own Mamba2 test file from the same commit, against the same install: 111 passed, 142 skipped, 2 failed
(test_generate_continue_from_past_key_values and _from_inputs_embeds, which pass here). CI cannot reach GitHub,
so there it runs without ``--repository``: the generation and config tests skip, ModelTesterMixin runs (75 / 85
per function and mixer; pytest: 160 passed).

Nothing is copied into this repository. Exits 0 even when offline (the tests then skip); prints what it got.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import types
import urllib.request
from pathlib import Path

import transformers

RAW = "https://raw.githubusercontent.com/huggingface/transformers/{ref}/{path}"
# The repository commit whose files were run against each transformers release (see the module docstring).
VERIFIED_REF = {"5.24.0": "decba1d2ea4ed3cbf0495d1828abad4b2dba1846"}
# repository files the sdist lacks (paths from the repository root) -> the placeholder written when one is missing
REPOSITORY_FILES = {
    "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "tests/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    "utils/test_module/__init__.py": "",  # test_configuration_utils imports utils/test_module/custom_configuration
    "utils/test_module/custom_configuration.py": "",
}


def tests_dir(dest: Path, version: str = transformers.__version__) -> Path:
    return dest / f"transformers-{version}" / "tests"


def fetch(dest: Path, version: str = transformers.__version__, repository: str | None = None) -> Path:
    """Unpack the sdist's tests under ``dest``; ``repository``: the git ref to fetch the other files at (None: not)."""
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
        file = target.parent / path
        if file.exists() and "HIER_MAMBA_PLACEHOLDER" not in file.read_text():
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        if repository is None:
            _placeholder(file, path, placeholder, "not fetched (the repository files are opt-in: --repository)")
            continue
        try:
            with urllib.request.urlopen(RAW.format(ref=repository, path=path), timeout=30) as response:
                file.write_bytes(response.read())
            print(f"downloaded {path} at {repository}")
        except OSError as error:
            _placeholder(file, path, placeholder, f"not downloadable: {error}")
    # A repository file that imports what this environment lacks would stop test_modeling_common from importing:
    # then every repository file becomes a placeholder, so the sdist's tests still run.
    error = _import_error(target)
    if error is not None:
        for path, placeholder in REPOSITORY_FILES.items():
            _placeholder(target.parent / path, path, placeholder, f"does not import here: {error}")
        print(f"after placeholders: {_import_error(target) or 'imports'}")
    return target


def _placeholder(file: Path, path: str, placeholder: str, reason: str) -> None:
    reason = reason.replace("\n", " ")[:300]
    file.write_text(f"HIER_MAMBA_PLACEHOLDER = True  # {path} {reason}\n{placeholder}")
    print(f"placeholder for {path} ({reason})")


def import_downloaded(target: Path, name: str) -> types.ModuleType:
    """Import ``name`` (e.g. "generation.test_utils") from the downloaded tests folder ``target``.

    The folder becomes the package ``transformers_tests`` (its relative imports work). The repository's
    tests/generation/test_utils.py imports ``tests.exporters.test_export`` by absolute name (it runs from the
    transformers checkout's root): that name is bound to the downloaded module, which test_modeling_common imports
    relatively, so both see one module.
    """
    if "transformers_tests" not in sys.modules:
        package = types.ModuleType("transformers_tests")
        package.__path__ = [str(target)]
        sys.modules["transformers_tests"] = package
        sys.modules.setdefault("tests.exporters.test_export",
                               importlib.import_module("transformers_tests.exporters.test_export"))
    return importlib.import_module(f"transformers_tests.{name}")


def _import_error(target: Path) -> str | None:
    """None when the downloaded test_modeling_common imports (in a fresh interpreter), else the error's last line."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "from pathlib import Path; from fetch_transformers_tests import import_downloaded; "
            f"import_downloaded(Path({str(target)!r}), 'test_modeling_common')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]


if __name__ == "__main__":
    options = [argument for argument in sys.argv[1:] if argument.startswith("--repository")]
    arguments = [argument for argument in sys.argv[1:] if argument not in options]
    ref = None
    if options:  # --repository: the verified commit for this release (else its tag); --repository=REF: that ref
        version = transformers.__version__
        ref = options[-1].partition("=")[2] or VERIFIED_REF.get(version, f"v{version}")
    root = Path(__file__).resolve().parents[1]
    print(fetch(Path(arguments[0]) if arguments else root / "build" / "transformers-tests", repository=ref))
