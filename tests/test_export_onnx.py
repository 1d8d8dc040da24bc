"""export writes ONNX by default (through torch.export where onnxscript is installed), with a
dynamic batch, and agrees with the TorchScript option."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.__main__ import main
from trainer_helpers import TINY, build_tiny


@pytest.mark.slow
def test_onnx_is_the_default_and_matches_torchscript(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from trainer.commands.export import load_exported

    shards = build_tiny(tmp_path, with_test=False)
    run = tmp_path / "run"
    assert main(["--config", "joint_mini", f"data.shards={shards}", f"run.dir={run}", *TINY,
                 "stages.0.epochs=1", "data.tta=3"]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["export", "--run", str(run), "--format", "torchscript"]) == 0
    assert "seed 000" not in capsys.readouterr().out
    onnx = load_exported(Path(run) / "export" / "model-model.onnx", "onnx")
    script = load_exported(Path(run) / "export" / "model-model.pt", "torchscript")
    chips = np.random.default_rng(0).integers(0, 256, size=(7, 1, 16, 16), dtype=np.uint8)
    for batch in (chips[:1], chips):   # the batch dimension is dynamic
        (c1, s1), (c2, s2) = onnx(batch), script(batch)
        assert np.asarray(c1).tolist() == np.asarray(c2).tolist()
        np.testing.assert_allclose(s1, s2, atol=1e-5)


@pytest.mark.slow
def test_every_classifier_exports_through_torch_export(tmp_path, capsys):
    """With onnxscript installed no classifier needs the older exporter."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from trainer.posthoc.registry import table
    from trainer_helpers import recipe_overrides

    shards = build_tiny(tmp_path, with_test=False)
    run = tmp_path / "run"
    assert main(["--config", "decoupled_mini", f"data.shards={shards}", f"run.dir={run}", *TINY,
                 *recipe_overrides("decoupled_mini"), "stages.0.classifiers=[crt,lws,ncm,tau_norm,logit_adjust]",
                 "posthoc.logit_adjust.max=1.0"]) == 0
    capsys.readouterr()
    for name in ["model", *table()]:
        assert main(["export", str(run), "--classifier", name]) == 0, name
        assert "older" not in capsys.readouterr().err, name
