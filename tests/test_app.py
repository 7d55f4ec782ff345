import ast
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.baselines import list_baselines

ROOT = Path(__file__).resolve().parent.parent


def test_app_shows_the_digits_baseline_card():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    card = next(c for c in list_baselines() if c["name"] == at.sidebar.selectbox(key="baseline").value)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top-1"] == f"{card['accuracy']['top1']:.2f}%"
    assert metrics["Parameters"] == f"{card['params']:,}"
    assert at.get("plotly_chart"), "the parameters-per-layer chart is missing"


def test_app_switches_baseline():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    names = at.sidebar.selectbox(key="baseline").options
    at.sidebar.selectbox(key="baseline").select(names[-1]).run()
    assert not at.exception
    card = next(c for c in list_baselines() if c["name"] == names[-1])
    assert {m.label: m.value for m in at.metric}["Top-1"] == f"{card['accuracy']['top1']:.2f}%"


def test_ui_layer_has_no_torch_code():
    files = [ROOT / "app.py", *sorted((ROOT / "explorer" / "ui").glob("*.py"))]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{f.name} imports torch"
