"""A technique is one module: a toy technique in a temporary plugin, with no line of the explorer changed, gets its
control drawn in the page's sidebar and offered in the Sweep tab, its value in the share link and the run key,
its command-line sweep flag, a place on a sweep's axis and a run through the cache. It runs in a child process
so that no other test sees the toy registered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from explorer.compress.base import Compressed, Control, StepConfig, clone, record, register_step
from explorer.core.errors import check_range


@dataclass(frozen=True)
class GainConfig(StepConfig):
    kind: ClassVar[str] = "toy_gain"
    page_order: ClassVar[int] = 55
    section: ClassVar[tuple[int, str, bool]] = (5, "Toy scaling", True)

    gain: float = 1.0

    def __post_init__(self) -> None:
        check_range("gain", self.gain, 0.5, 2.0)

    def label(self) -> str:
        return f"gain x{self.gain:g}"

    def words(self) -> str:
        return f"every weight times {self.gain:g}"

    @classmethod
    def controls(cls):
        return (Control("toy_gain", 1.0, lo=0.5, hi=2.0, step=0.5, off=1.0, label="Toy gain",
                        help="multiplies every weight by this"),)

    @classmethod
    def from_controls(cls, controls, card, before):
        return None if controls["toy_gain"] == 1.0 else cls(gain=controls["toy_gain"])

    def to_controls(self) -> dict[str, Any]:
        return {"toy_gain": self.gain}


@register_step(GainConfig)
def apply(model, cfg, ctx):
    out, state = clone(model), ctx.state.copy()
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(cfg.gain)
    record(state, cfg, {"gain": cfg.gain})
    return Compressed(out, state)
'''

CHECK = '''
import json, sys, time
from streamlit.testing.v1 import AppTest

from explorer.app import cli, service
from explorer.compress.recipe import Recipe
from explorer.run.grid import Grid
from explorer.run.runner import run_key
from tests.conftest import settle

out = {}
at = AppTest.from_file(sys.argv[1], default_timeout=300)
for k, v in {"baseline": "digits_cnn-digits", "sparsity": "0.0", "toy_gain": "1.5"}.items():  # a link that sets it
    at.query_params[k] = v
settle(at.run())
box = at.sidebar.number_input(key="toy_gain")
out["sidebar"] = [box.label, box.value, box.min, box.max, box.help]
out["expanders"] = [e.label for e in at.sidebar.expander]
out["errors"] = [e.value for e in (*at.exception, *at.error)]
out["link"] = at.query_params.get("toy_gain")
card = next(c for c in service.list_baselines() if c["name"] == "digits_cnn-digits")
c = {**service.DEFAULTS, "baseline": card["name"], "sparsity": 0.0, "toy_gain": 2.0}
recipe = service.build(c, card)
out["steps"] = [s.kind for s in recipe.steps]
out["key_differs"] = run_key(recipe) != run_key(service.build({**c, "toy_gain": 1.0}, card))
out["round_trip"] = service.from_recipe(recipe.to_dict(), card) is not None
grid = Grid.of("digits_cnn", "digits", sparsity=(0.0,), bits=("fp32",), clusters=("off",), toy_gain=(1.0, 1.5, 2.0))
out["grid"] = [r.label() for r in grid.recipes()]
out["flag"] = "--toy-gain" in cli.sweep_parser().format_help()
at.query_params["tab"] = "Sweep"  # only the open tab is drawn
settle(at.run())
out["sweep_choice"] = [m.label for m in at.multiselect if m.key == "sweep_toy_gain"]
res = service.cache().get_or_run(Recipe(model="digits_cnn", steps=recipe.steps), latency=False)
out["run"] = [res["status"], res.get("label")]
print("RESULT " + json.dumps(out))
'''


def test_a_plugins_technique_gets_its_control_its_run_key_and_its_sweep_axis(tmp_path):
    (tmp_path / "toy_gain_plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}", "EXPLORER_PLUGINS": "toy_gain_plugin",
           "EXPLORER_CACHE_DIR": str(tmp_path / "cache"), "EXPLORER_LANDSCAPE": "0", "HOME": str(tmp_path),
           "EXPLORER_LATENCY_BUDGET_S": "0.05"}
    done = subprocess.run([sys.executable, "-c", CHECK, str(ROOT / "app.py")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, done.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["errors"] == []
    assert out["sidebar"] == ["Toy gain", 1.5, 0.5, 2.0, "multiplies every weight by this"]  # drawn from its Control
    assert "Toy scaling" in out["expanders"] and out["link"] == "1.5"  # its own section; the link keeps it
    assert out["steps"] == ["toy_gain"] and out["key_differs"] and out["round_trip"]
    assert out["grid"] == ["baseline", "gain x1.5", "gain x2"]  # a sweep varies it
    assert out["flag"]
    assert out["sweep_choice"] == ["Toy gain"]  # the Sweep tab offers it
    assert out["run"] == ["ok", "gain x2"]
