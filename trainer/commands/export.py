"""`python -m trainer export --run RUN [--classifier NAME] --format onnx|torchscript`

Writes a model that needs nothing from this repository: it takes uint8 chips [B, C, S, S]
(centre-cropped or edge-padded to the run's input size S, as `predict` does) and returns, per
chip, the class id and a confidence score (`--score`, trainer/evaluate/ood.py: higher = more likely a
known class). Normalisation, the chosen classifier (the model's head or a post-hoc one) and the
run's TTA views are inside. `python -m trainer predict` computes the same classes and scores
(the test suite checks both formats against it on the test split).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from datasets.stream_spec import Normalizer
from shards.atomic import atomic_path, write_json
from shards.errors import exit_on_error
from trainer.errors import USER_ERRORS, ConfigError
from trainer.evaluate.ood import SCORES
from trainer.commands.cli import export_parser
from trainer.commands.predict import MODEL, load_scorer, run_normalizer
from trainer.evaluate.scoring import Scorer, mean_softmax_log, tta_views
from trainer.posthoc.batchnorm import inner, load_bn_state, stats_of

SEED_REFERENCE = {"file_mb": 11.2, "latency_s": 0.0146}   # Li, Tan & Pan 2021: Shake-Shake-26 2x32d, 2080 Ti


class Deployed(nn.Module):
    """uint8 [B,C,S,S] -> (class_id int64 [B], score float32 [B])."""

    def __init__(self, scorer: Scorer, norm: Normalizer, score: str) -> None:
        super().__init__()
        self.model, self.classifier, self.views, self.score = scorer.model, scorer.classifier, scorer.views, score
        if stats_of(self.classifier) is not None:   # one classifier per file: its statistics go into the model
            load_bn_state(self.model, stats_of(self.classifier))
            self.classifier = inner(self.classifier)
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)   # one value, or one per channel
        std = torch.tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))   # as datasets.stream_spec.Normalizer
        self.register_buffer("shift", mean / std)

    def forward(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = chips.float() * self.scale - self.shift
        logits = torch.stack([self.classifier(self.model.features(v)).float() for v in tta_views(x, self.views)])
        if len(self.views) == 1:
            scores = logits[0]
        else:   # the log of the mean softmax over the views, as trainer.evaluate.scoring does
            scores = mean_softmax_log(logits)
        mean = logits.mean(0)
        top = mean.max(dim=1).values
        if self.score == "max_logit":
            conf = top
        else:
            lse = torch.logsumexp(mean, dim=1)
            conf = lse if self.score == "energy" else torch.exp(top - lse)
        return scores.argmax(dim=1), conf


def export(run: Path, classifier: str = MODEL, fmt: str = "onnx", score: str = "msp",
           out: Path | None = None) -> dict:
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format: {fmt!r} is not onnx or torchscript")
    if score not in SCORES:
        raise ConfigError(f"--score: {score!r} is not one of {', '.join(SCORES)}")
    scorer, info = load_scorer(run, classifier)
    deployed = Deployed(scorer, run_normalizer(info), score).eval()
    channels = info.get("channels", 1)
    example = torch.zeros(2, channels, info["input_size"], info["input_size"], dtype=torch.uint8)
    out = Path(out or run / "export" / f"model-{classifier}.{'onnx' if fmt == 'onnx' else 'pt'}")
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still what a C++ or
        # Java service loads without Python; the tracer's notices are not for the user.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(deployed, example), str(tmp))
        else:
            write_onnx(deployed, example, tmp)
    record = {"file": str(out), "format": fmt, "classifier": classifier, "score": score,
              "input": {"dtype": "uint8", "shape": ["batch", channels, info["input_size"], info["input_size"]]},
              "outputs": ["class_id", "score"], "classes": info["classes"], "class_names": info.get("class_names"),
              "preprocess": preprocess_note(info), "tta_views": list(scorer.views), "file_mb": out.stat().st_size / 2**20,
              "latency_s_batch1": latency(out, fmt, example[:1]), "seed_reference": SEED_REFERENCE}
    write_json(out.with_suffix(".json"), record, indent=1)
    return record


def write_onnx(deployed: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX through torch.export (the supported exporter), the batch dimension dynamic. It
    needs onnxscript (the `export` extra); without it the older TorchScript-based exporter
    writes the same graph, with a note."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        print("note: onnxscript is not installed (pip install '.[export]'); using the older "
              "TorchScript-based ONNX exporter", file=sys.stderr)
        return write_onnx_legacy(deployed, example, path)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.onnx.export(deployed, (example,), dynamo=True, input_names=["chips"],
                                    output_names=["class_id", "score"], dynamic_shapes=({0: batch},),
                                    optimize=True, verbose=False, report=False)
    except Exception as e:   # a classifier torch.export cannot trace: the older exporter still can
        print(f"note: torch.export could not trace the model ({type(e).__name__}); using the older "
              "TorchScript-based ONNX exporter", file=sys.stderr)
        return write_onnx_legacy(deployed, example, path)
    program.save(str(path))


def write_onnx_legacy(deployed: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(deployed, (example,), str(path), dynamo=False, opset_version=17,
                      input_names=["chips"], output_names=["class_id", "score"],
                      dynamic_axes={"chips": {0: "batch"}, "class_id": {0: "batch"}, "score": {0: "batch"}})


def preprocess_note(info: dict) -> dict:
    """How a file becomes the model's input, as the shards build and `predict` do it
    (shards/chips.py): the recorded intensity mapping and size policy, then the centre crop."""
    size = info["input_size"]
    return {**(info.get("preprocess") or {"intensity": "auto", "mapping": "linear", "depth": "8-bit",
                                           "size_policy": "crop", "chip_size": None}),
            "then": f"centre crop to {size}x{size} (edge-replicate a shorter side)"}


def load_exported(path: Path, fmt: str):
    """A callable uint8 numpy/tensor batch -> (class ids, scores) as numpy arrays."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path)).eval()

        def run(x):
            with torch.no_grad():
                return tuple(t.numpy() for t in module(torch.as_tensor(x)))
        return run
    import onnxruntime as ort   # an optional dependency: only `--format onnx` needs it

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: tuple(session.run(None, {"chips": torch.as_tensor(x).numpy()}))


def latency(path: Path, fmt: str, chip: torch.Tensor, repeats: int = 20) -> float | None:
    """Median seconds per chip at batch 1 on this machine (None where the runtime is missing)."""
    try:
        run = load_exported(path, fmt)
    except ImportError:
        return None
    run(chip)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(chip)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str]) -> int:
    a = export_parser().parse_args(argv)
    return exit_on_error(lambda: _export(a), USER_ERRORS)


def _export(a: argparse.Namespace) -> int:
    r = export(a.run, a.classifier, a.format, a.score, a.out)
    lat = f"{1000 * r['latency_s_batch1']:.2f} ms/chip at batch 1" if r["latency_s_batch1"] else "latency not measured"
    print(f"{r['file']}: {r['format']}, {r['file_mb']:.2f} MiB, {lat} on this machine "
          f"(the three-stage paper's model, Li, Tan, Pan 2021: {SEED_REFERENCE['file_mb']} MB, "
          f"{1000 * SEED_REFERENCE['latency_s']:.1f} ms on a 2080 Ti)")
    return 0
