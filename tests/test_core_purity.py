"""core/ is plain Python grouped by domain: no module imports Streamlit, only core/views imports
altair, no module grows past what a reader can hold, and only the family registry names families."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
DOMAINS = ("model", "inspection", "experiments", "retrieval", "training", "views")
MAX_LINES = 460  # "no module over ~450 lines"


def _modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_core_is_grouped_into_domain_packages():
    for domain in DOMAINS:
        assert (CORE / domain / "__init__.py").is_file(), domain
    loose = sorted(p.name for p in CORE.glob("*.py") if p.name != "__init__.py")
    # Only what every domain shares stays at the top: errors, paths and the tolerance rule.
    assert loose == ["errors.py", "paths.py", "tolerance.py"]


def test_no_core_module_imports_streamlit_or_the_ui():
    offenders = [
        f"{p.relative_to(CORE)}: {n}"
        for p in _modules()
        for n in _imports(p)
        if n.split(".")[0] in {"streamlit", "ui"}
    ]
    assert offenders == []


def test_only_views_imports_altair():
    offenders = [
        f"{p.relative_to(CORE)}: {n}"
        for p in _modules()
        if p.parent.name != "views"
        for n in _imports(p)
        if n.split(".")[0] == "altair"
    ]
    assert offenders == []


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*_modules(), *(ROOT / "pages").glob("*.py")]
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_only_the_registry_and_loading_name_a_family():
    """Nothing outside core/model branches on "gpt2"/"llama": code asks the registry what a model has."""
    family_test = re.compile(
        r"""family\s*(==|!=|\bin\b)|(==|!=)\s*["'](gpt2|llama|qwen2|mistral|gpt_neox)["']"""
    )
    offenders = []
    for path in [*_modules(), *(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py")]:
        if path.parent.name == "model":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if family_test.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_importing_all_of_core_does_not_load_streamlit():
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in _modules()
        if p.stem != "__init__" and p.stem != "__main__"
    ]
    code = "import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
