"""Packaging: what pyproject.toml declares is what the code imports, and the sdist and the
wheel both build and install into a clean target where ``import mrcnn`` works."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# Import name -> distribution name, where they differ.
DIST_OF_MODULE = {
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "tensorflow": "tensorflow",
    "jax": "jax",
}
# Modules that may only be imported lazily / optionally by the library (inside a function or
# a try block): backends chosen by extras, and the benchmark peer.
OPTIONAL_MODULES = {"tensorflow", "jax", "jaxlib", "torch", "torchvision", "IPython", "psutil"}


def _dist_name(requirement: str) -> str:
    """'jax[cpu]>=0.4' -> 'jax'."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def _declared(*extras: str) -> set[str]:
    names = {_dist_name(r) for r in PROJECT["dependencies"]}
    for extra in extras:
        names |= {_dist_name(r) for r in PROJECT["optional-dependencies"][extra]}
    return names


def _top_level_imports(path: Path) -> set[str]:
    """Top-level module names imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party(names: set[str]) -> set[str]:
    local = {"mrcnn", "samples", "tests", "bench", "nbtools"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_requirements_txt_lists_the_runtime_dependencies_of_pyproject():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    expected = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["tensorflow"]
    assert sorted(lines) == sorted(expected), (
        "requirements.txt must equal pyproject's dependencies plus the tensorflow extra")


def test_lower_bounds_file_pins_every_declared_minimum():
    pins = {}
    for line in (ROOT / ".ci" / "lower-bounds.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    extras = PROJECT["optional-dependencies"]
    for requirement in PROJECT["dependencies"] + extras["tensorflow"] + extras["jax"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        assert match, f"{requirement!r}: declare runtime dependencies as NAME>=VERSION"
        name, minimum = match.group(1).lower(), match.group(2)
        assert name in pins, f"{name} is missing from .ci/lower-bounds.txt"
        assert pins[name].startswith(minimum), (
            f"{name}: pyproject says >={minimum}, lower-bounds.txt tests {pins[name]}")


def test_every_module_level_import_of_the_library_is_declared():
    declared = _declared()
    missing = {}
    for path in sorted((ROOT / "mrcnn").rglob("*.py")):
        for module in _third_party(_top_level_imports(path)):
            if module in OPTIONAL_MODULES:
                missing.setdefault(module, []).append(f"{path.name} (optional: import lazily)")
            elif DIST_OF_MODULE.get(module, module).lower() not in declared:
                missing.setdefault(module, []).append(path.name)
    assert not missing, f"undeclared or eager optional imports: {missing}"


def test_every_module_level_import_of_the_samples_is_declared():
    declared = _declared("tensorflow")
    missing = {}
    for path in sorted((ROOT / "samples").rglob("*.py")):
        for module in _third_party(_top_level_imports(path)) - OPTIONAL_MODULES:
            if DIST_OF_MODULE.get(module, module).lower() not in declared:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"samples import undeclared packages: {missing}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The sdist and the wheel, built from the source tree without network."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                    "--outdir", str(out), str(ROOT)], check=True, capture_output=True,
                   timeout=600)
    return out


def _install_and_import(artifact: Path, target: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-compile", "--target", str(target),
                    str(artifact)], check=True, capture_output=True, timeout=600)
    # From an empty folder, with only the install target added to the path: the source tree
    # cannot be what gets imported.
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONSAFEPATH="1")
    code = ("import mrcnn, mrcnn.config, mrcnn.utils; "
            "print(mrcnn.__file__, mrcnn.config.Config.NAME is None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=target, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_sdist_contains_what_a_build_from_it_needs(built):
    (sdist,) = built.glob("mrcnn-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "mrcnn/__init__.py", "mrcnn/ops/nms.py"} <= names


def test_wheel_holds_the_package_and_its_metadata(built):
    (wheel,) = built.glob("mrcnn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "mrcnn/ops/__init__.py" in names
    assert not any(n.startswith(("tests/", "samples/", "bench/")) for n in names)
    assert "Requires-Python: >=3.11" in metadata
    assert "Provides-Extra: jax" in metadata and "Provides-Extra: tensorflow" in metadata


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_built_package_installs_and_imports(built, tmp_path, kind):
    pattern = "mrcnn-*.tar.gz" if kind == "sdist" else "mrcnn-*.whl"
    (artifact,) = built.glob(pattern)
    target = tmp_path / "site"
    out = _install_and_import(artifact, target)
    module_file, config_ok = out.split()
    assert Path(module_file).resolve().is_relative_to(target.resolve())
    assert config_ok == "True"
