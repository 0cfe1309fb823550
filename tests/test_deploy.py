"""The Docker Space: the files its Dockerfile copies, with the pinned requirements, serve a reading.

No Docker engine runs here, so this checks what the image would hold: only the COPY'd
paths, a fresh HOME and HF_HOME, no data folder and no Hub access.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from importlib.metadata import packages_distributions

from conftest import ROOT, running_app
from gradio_client import Client, handle_file

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def copied_paths() -> list[str]:
    """Sources of the Dockerfile's COPY instructions (flags and destination left out)."""
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            sources += [word for word in line.split()[1:-1] if not word.startswith("--")]
    return sources


def third_party_imports() -> set[str]:
    """Top-level modules imported by app.py and the package, other than the stdlib and itself."""
    modules = set()
    for path in [ROOT / "app.py", *sorted((ROOT / "boneage_infer").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"boneage_infer", "__future__"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_pinned_in_requirements():
    pinned = {
        normalise(line.split("==")[0])
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    distributions = packages_distributions()
    missing = {
        module: distributions.get(module)
        for module in third_party_imports()
        if not {normalise(d) for d in distributions.get(module, [module])} & pinned
    }
    assert not missing, f"imported but not pinned in requirements.txt: {missing}"


def test_the_files_the_image_holds_serve_a_reading(tmp_path, radiograph):
    assert "EXPOSE 7860" in DOCKERFILE and "--uid 1000" in DOCKERFILE and "USER user" in DOCKERFILE
    app = tmp_path / "app"
    for source in copied_paths():
        target = app / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    home = tmp_path / "home"
    env = {
        "HOME": str(home),
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
        "BONEAGE_DATA_DIR": str(tmp_path / "no-data"),  # a Space has no RSNA folder
        "BONEAGE_WEIGHTS": None,
        "BONEAGE_HF_REPO": None,
    }
    with running_app(app, tmp_path / "app.log", env) as url:
        result = Client(url, verbose=False).predict(
            handle_file(str(radiograph)), "F", "118", "", "", "", api_name="/predict"
        )
    bone_age, details, model_info = result[0], result[8], result[9]
    version = json.loads((ROOT / "weights" / "manifest.json").read_text())["version"]
    assert 0 < details["bone_age_months"] < 240 and bone_age.startswith(
        f"{details['bone_age_months']:.1f} months"
    )
    assert version in model_info
