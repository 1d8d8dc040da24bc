"""What pyproject.toml declares: pillow (imported), DALI only as the `dali` extra, and a trainer
that runs without DALI installed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

from trainer_helpers import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_pillow_declared_and_dali_an_extra():
    deps = names(PROJECT["dependencies"])
    assert "pillow" in deps
    assert not any(d.startswith("nvidia-dali") for d in deps)
    assert any(d.startswith("nvidia-dali") for d in names(PROJECT["optional-dependencies"]["dali"]))
    assert "onnxscript" in names(PROJECT["optional-dependencies"]["export"])


def test_setup_installs_dali_on_linux_x86_64_only():
    text = (REPO / "launch" / "setup.sh").read_text()
    assert '"Linux-x86_64" ] && extras=dev,dali' in text


def test_the_trainer_imports_and_trains_without_dali(tmp_path):
    """nvidia.dali made unimportable: the run, the commands and the data bench still import."""
    code = ("import sys; sys.modules['nvidia.dali'] = None\n"
            "import trainer.run, trainer.commands.predict, trainer.commands.report, datasets.bench\n"
            "from trainer.streams import choose_loader\nimport torch\n"
            "assert choose_loader('auto', 1, torch.device('cpu')) in ('resident', 'torch')\n"
            "assert 'nvidia.dali' not in {k for k, v in sys.modules.items() if v is not None}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
