"""Compilation: a booster as C, built into a shared library by TL2cgen with quantized thresholds.

The platform it was built for is recorded beside it (`platform.json`, with the toolchain, the library's
digest and what turns its margin into a prediction); the portable UBJ booster stays the model of record, and
consumers fall back to it where the platform differs or TL2cgen is missing (`consumer.py`). The library is
plain C loaded through ctypes, so machine, OS and C library decide whether it loads.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb

from champion.store import run_logger
from tasks import pyfunc_model
from tasks.compaction.booster import LINK_FUNCTIONS, LINKS, objective_of
from tasks.compaction.measure import single_row_latency
from tasks.stage import stage

if TYPE_CHECKING:
    from tasks.compaction.candidates import CompactCandidate
    from tasks.split import Splits

COMPILED_DIR = "compiled"  # inside the logged model: the shared library and platform.json
PLATFORM_FILE = "platform.json"


def platform_record() -> dict:
    """What a compiled library is tied to: machine, OS and C library decide whether it loads; Python and its
    ABI are recorded for the record."""
    libc = platform.libc_ver()
    return {
        "machine": platform.machine(),
        "system": sys.platform,
        "libc": libc[0] or "",
        "libc_version": libc[1] or "",
        "python": platform.python_version(),
        "abi": sysconfig.get_config_var("SOABI") or "",
    }


def platform_matches(recorded: dict, here: dict | None = None) -> tuple[bool, str]:
    here = here or platform_record()
    differs = [
        f"{k} {recorded.get(k)!r} != {here[k]!r}"
        for k in ("machine", "system", "libc")
        if recorded.get(k) != here[k]
    ]
    return not differs, "; ".join(differs)


def _library_suffix() -> str:
    return {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")


def _toolchain() -> str | None:
    for name in ("gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def scratch_dir() -> Path:
    """A temporary folder to build the library in, before it is logged with the model."""
    return Path(tempfile.mkdtemp(prefix="mlops-compact-"))


@dataclass(frozen=True)
class Compiled:
    folder: Path  # holds the library and platform.json
    meta: dict

    @property
    def library(self) -> Path:
        return self.folder / self.meta["library"]


def compile_booster(
    booster: xgb.Booster,
    config: dict,
    folder: Path,
    check: np.ndarray | None = None,
    quantize: bool = True,
    threads: int = 1,
) -> Compiled:
    """`booster` as a shared library (TL2cgen, thresholds quantized) plus platform.json: the platform, the
    toolchain, the library's digest and what turns its margin into a prediction. With `check` rows, the
    library's margins must equal XGBoost's to 1e-5."""
    # why: optional dependencies, imported only when compiling (without them the booster alone is shipped)
    import tl2cgen
    import treelite

    toolchain = _toolchain()
    if toolchain is None:
        raise RuntimeError("no C compiler (gcc or clang) on PATH")
    objective = objective_of(booster)
    if objective not in LINKS:
        raise RuntimeError(f"objective {objective} has no known link function")
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"model{_library_suffix()}"
    started = time.perf_counter()
    tl2cgen.export_lib(
        treelite.frontend.from_xgboost(booster),
        toolchain=toolchain,
        libpath=str(library),
        params={"quantize": int(quantize), "parallel_comp": max(1, threads)},
        nthread=max(1, threads),
    )
    seconds = time.perf_counter() - started
    meta = {
        **platform_record(),
        "library": library.name,
        "sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
        "toolchain": toolchain,
        "treelite": treelite.__version__,
        "tl2cgen": tl2cgen.__version__,
        "quantize": int(quantize),
        "objective": objective,
        "link": LINKS[objective],
        "base_score_margin": _base_score_margin(booster, len(booster.feature_names or config["features"])),
        "config": config,
        "compile_seconds": round(seconds, 2),
        "size_kb": round(library.stat().st_size / 1024, 1),
    }
    compiled = Compiled(folder, meta)
    if check is not None and len(check):
        _check_margins(compiled, booster, check.astype(np.float32))
    (folder / PLATFORM_FILE).write_text(json.dumps(meta, indent=2))
    return compiled


def _base_score_margin(booster: xgb.Booster, n_features: int) -> float:
    """The margin XGBoost adds as base_score. It drops it when a base margin is given; the library always
    adds it, so a prediction with a base margin takes it off again."""
    zero = np.zeros((1, n_features), dtype=np.float32)
    return float(booster.inplace_predict(zero, predict_type="margin")[0]) - float(
        booster.inplace_predict(zero, predict_type="margin", base_margin=np.zeros(1))[0]
    )


def _check_margins(compiled: Compiled, booster: xgb.Booster, rows: np.ndarray) -> None:
    """The library's margins on `rows` equal XGBoost's to 1e-5; the largest difference goes in its meta."""
    ours = CompiledModel(compiled).margin(rows)
    theirs = booster.inplace_predict(rows, predict_type="margin")
    compiled.meta["max_abs_margin_diff"] = float(np.max(np.abs(ours - theirs)))
    if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
        raise RuntimeError(
            f"compiled margins differ from XGBoost's by up to {compiled.meta['max_abs_margin_diff']:.3g}"
        )


class CompiledModel:
    """A TL2cgen library loaded for prediction; `predict` matches `predict_with` on the same booster."""

    def __init__(self, compiled: Compiled, threads: int = 1):
        import tl2cgen  # why: optional; a missing TL2cgen raises here and the consumer uses the booster

        self.meta = compiled.meta
        self.config = compiled.meta["config"]
        self._dmatrix = tl2cgen.DMatrix
        self._predictor = tl2cgen.Predictor(str(compiled.library), nthread=threads)

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        """The trees' sum plus base_score, like XGBoost's margin without a base margin."""
        out = self._predictor.predict(self._dmatrix(np.asarray(matrix, dtype=np.float32)), pred_margin=True)
        return np.asarray(out, dtype=np.float64).reshape(len(matrix))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        margin = self.margin(frame[list(self.config["features"])].to_numpy(np.float32))
        offset = pyfunc_model.offset_margin(frame, self.config.get("offset"))
        if offset is not None:
            margin = margin - self.meta["base_score_margin"] + offset
        out = LINK_FUNCTIONS[self.meta["link"]](margin)
        return pyfunc_model.inverse(out, self.config.get("target_transform", "identity"))


@stage
def compile_compact(
    candidate: CompactCandidate, splits: Splits, folder: Path, calls: int = 500
) -> Compiled | None:
    """The chosen model compiled for this platform, checked against the booster on the test window and timed
    on single rows; None (the booster alone is shipped) when TL2cgen or a compiler is missing or the check
    fails."""
    log = run_logger()
    rows = splits.test[list(candidate.features)].to_numpy()
    try:
        compiled = compile_booster(candidate.booster, candidate.config, folder, rows)
    except Exception as exc:
        log.warning("not compiled (%s: %s): the UBJ booster alone is shipped", type(exc).__name__, exc)
        return None
    p50, p99 = single_row_latency(CompiledModel(compiled).margin, rows[:200].astype(np.float32), calls)
    compiled.meta.update(p50_us=round(p50, 1), p99_us=round(p99, 1))
    (folder / PLATFORM_FILE).write_text(json.dumps(compiled.meta, indent=2))
    c = compiled.meta
    log.info(
        "compiled %s for %s-%s with %s in %.1f s: %.1f KB, single-row p50 %.0f us, margins within %.2g",
        candidate.label, c["machine"], c["system"], c["toolchain"], c["compile_seconds"], c["size_kb"], p50,
        c["max_abs_margin_diff"],
    )  # fmt: skip
    return compiled
