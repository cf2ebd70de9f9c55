#!/usr/bin/env python
"""Generate the sample datasets shipped in ``clusterlmer/datasets/data/``.

Writes, for each kind (``2way``, ``1way``):

* ``lme_data_<kind>.mat``: a MATLAB v7.3 file in the original MATLAB layout
  (``sid``, ``ch``, ``hit_miss``, ``region`` [2-way only], ``data``, ``times``),
  written with :func:`clusterlmer.io.write_mat73`;
* ``lme_data_<kind>.json``: the ground truth (generator, seed, every
  :func:`clusterlmer.simulate.simulate_ieeg` parameter, shapes, effect
  windows, channel counts, sha256 of the ``.mat`` file).

The output is deterministic: every draw comes from the fixed seed, and the
date in the MATLAB header is fixed (``write_mat73`` stamps the current time
and the Python version, so this script rewrites the 128-byte header text
afterwards; HDF5 ignores the userblock). Rerunning the script in the same
environment reproduces both files byte for byte.

Usage::

    python scripts/make_sample_data.py                 # into clusterlmer/datasets/data/
    python scripts/make_sample_data.py --out /tmp/x    # somewhere else
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from clusterlmer.io import write_mat73
from clusterlmer.simulate import simulate_ieeg

SCRIPT = "scripts/make_sample_data.py"
#: Bump when the output of this script changes for the same clusterlmer.simulate.
GENERATOR_VERSION = 1
#: The "Created on" date written into the MATLAB header of every file.
HEADER_DATE = datetime.datetime(2024, 1, 1, 0, 0, 0)

FORMULAS = {
    "2way": "data ~ hit_miss * region + (1|sid) + (1|sid:ch)",
    "1way": "data ~ hit_miss + (1|sid) + (1|sid:ch)",
}
STATISTIC = {"2way": "F", "1way": "t"}

#: Every simulate_ieeg argument, spelled out so the JSON records all of them.
PARAMS = {
    "2way": {
        "kind": "2way", "n_subjects": 15, "n_channels": 169, "n_times": 139, "seed": 2024,
        "hit_miss_effect": 0.6, "interaction_effect": 0.8, "subject_sd": 1.0, "channel_sd": 0.7,
        "noise_sd": 1.0, "ar": 0.85,
    },
    "1way": {
        "kind": "1way", "n_subjects": 15, "n_channels": 93, "n_times": 139, "seed": 2025,
        # simulate_ieeg ignores interaction_effect for 1-way data; 0 says so in the JSON.
        "hit_miss_effect": 0.6, "interaction_effect": 0.0, "subject_sd": 1.0, "channel_sd": 0.7,
        "noise_sd": 1.0, "ar": 0.85,
    },
}

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "clusterlmer" / "datasets" / "data"

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def file_stem(kind: str) -> str:
    return f"lme_data_{kind}"


def mat_header(date: datetime.datetime = HEADER_DATE) -> bytes:
    """A fixed 128-byte MATLAB v7.3 header (text, subsystem offset, version, endianness)."""
    stamp = f"{_DAYS[date.weekday()]} {_MONTHS[date.month - 1]} {date:%d %H:%M:%S %Y}"
    text = f"MATLAB 7.3 MAT-file, Platform: clusterlmer sample data, Created on: {stamp} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def simulate(kind: str):
    """The dataset and simulate_ieeg's GroundTruth for ``kind``."""
    params = dict(PARAMS[kind])
    return simulate_ieeg(params.pop("kind"), return_truth=True, **params)


def mat_variables(data, kind: str) -> dict:
    """Variables in the original MATLAB layout, in its order (times last)."""
    design = data.design
    variables = {
        "sid": [str(s) for s in design["sid"]],
        "ch": [str(c) for c in design["ch"]],
        "hit_miss": design["hit_miss"].to_numpy(dtype=np.float64),
    }
    if kind == "2way":
        variables["region"] = [str(r) for r in design["region"]]
    variables["data"] = np.asarray(data.values, dtype=np.float64)
    variables["times"] = np.asarray(data.times, dtype=np.float64).reshape(1, -1)  # 1 x n_times row
    return variables


def write_mat(path: Path, data, kind: str) -> bytes:
    """Write the .mat file with the fixed header; return its bytes."""
    write_mat73(path, mat_variables(data, kind))
    header = mat_header()
    with open(path, "r+b") as fh:
        assert fh.read(19) == b"MATLAB 7.3 MAT-file"
        fh.seek(0)
        fh.write(header)
    return path.read_bytes()


def _window(win, effect, times, signal):
    start, stop = int(win[0]), int(win[1])
    n = stop - start
    profile = np.hanning(n + 2)[1:-1]  # as in simulate_ieeg: a Hann taper, peak 1
    peaks = [start + int(i) for i in np.flatnonzero(np.isclose(profile, profile.max(), rtol=0, atol=1e-12))]
    return {
        "start": start,
        "stop": stop,
        "first": start,
        "last": stop - 1,
        "first_matlab": start + 1,
        "last_matlab": stop,
        "n_samples": n,
        "first_time": float(times[start]),
        "last_time": float(times[stop - 1]),
        "peak_samples": peaks,
        "peak_times": [float(times[i]) for i in peaks],
        "effect": float(effect),
        "signal": signal,
        "profile": [round(float(p), 12) for p in profile],
    }


def environment() -> dict:
    import h5py

    import clusterlmer

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "clusterlmer": clusterlmer.__version__,
        "system": platform.system(),
        "machine": platform.machine(),
    }


def ground_truth(kind: str, data, truth, mat_bytes: bytes) -> dict:
    """The JSON record written next to the .mat file."""
    design = data.design
    params = PARAMS[kind]
    channels = design.drop_duplicates(["sid", "ch"])
    per_subject = {str(k): int(v) for k, v in channels.groupby("sid", sort=False).size().items()}
    times = np.asarray(data.times, dtype=float)
    windows = {
        "hit_miss": _window(
            truth.hit_miss_window, truth.hit_miss_effect, times,
            "hit - miss = effect * profile in every channel"
            + (" (both regions)" if kind == "2way" else ""),
        )
    }
    record = {
        "name": file_stem(kind),
        "file": f"{file_stem(kind)}.mat",
        "sha256": hashlib.sha256(mat_bytes).hexdigest(),
        "size_bytes": len(mat_bytes),
        "generator": {
            "script": SCRIPT,
            "version": GENERATOR_VERSION,
            "function": "clusterlmer.simulate.simulate_ieeg",
            "header_date": HEADER_DATE.isoformat(),
        },
        "environment": environment(),
        "simulate_ieeg": dict(params),
        "seed": params["seed"],
        "formula": FORMULAS[kind],
        "statistic": STATISTIC[kind],
        "format": "MATLAB v7.3 (HDF5 with a 512-byte MATLAB header)",
        "variables": {
            "sid": f"cellstr {len(design)} x 1",
            "ch": f"cellstr {len(design)} x 1",
            "hit_miss": f"double {len(design)} x 1 (hit = 1, miss = 0)",
            **({"region": f"cellstr {len(design)} x 1"} if kind == "2way" else {}),
            "data": f"double {data.values.shape[0]} x {data.values.shape[1]}",
            "times": f"double 1 x {len(times)} (seconds)",
        },
        "shape": {"rows": int(data.values.shape[0]), "times": int(data.values.shape[1])},
        "times": {"first": float(times[0]), "last": float(times[-1]), "step": 0.01, "unit": "s"},
        "n_subjects": len(per_subject),
        "n_channels": len(channels),
        "channels_per_subject": per_subject,
        "window_convention": (
            "samples are 0-based indices into the time axis; [start, stop) is a half-open "
            "Python slice; first/last are inclusive (last = stop - 1); first_matlab/last_matlab "
            "are MATLAB's 1-based inclusive indices; first_time/last_time are times[first] and "
            "times[last] in seconds; profile[i] is the effect weight at sample first + i"
        ),
        "windows": windows,
    }
    if kind == "2way":
        per_region = {str(k): int(v) for k, v in channels.groupby("region", sort=False).size().items()}
        record["channels_per_region"] = per_region
        record["region_order"] = list(per_region)  # first appearance: MATLAB's reference level first
        windows["interaction"] = _window(
            truth.interaction_window, truth.interaction_effect, times,
            "hit - miss = +effect * profile in hc channels and -effect * profile in phrc channels",
        )
        ref = record["region_order"][0]
        record["true_effects"] = {
            "hit_miss": {
                "reference": ["hit_miss", "interaction"],
                "effects": ["hit_miss"],
                "note": (
                    f"with reference coding the hit_miss term is the hit - miss difference in the "
                    f"reference region ({ref!r}), which is also nonzero in the interaction window; "
                    "with effects coding it is the average over regions, zero there"
                ),
            },
            "region": {"reference": [], "effects": []},
            "hit_miss:region": {"reference": ["interaction"], "effects": ["interaction"]},
        }
    else:
        record["true_effects"] = {"hit_miss": {"reference": ["hit_miss"], "effects": ["hit_miss"]}}
    return record


def dump_json(record: dict) -> str:
    return json.dumps(record, indent=2, ensure_ascii=True) + "\n"


def write_dataset(kind: str, out: Path) -> tuple[Path, Path]:
    """Simulate ``kind`` and write its .mat and .json files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data, truth = simulate(kind)
    mat_path = out / f"{file_stem(kind)}.mat"
    json_path = out / f"{file_stem(kind)}.json"
    mat_bytes = write_mat(mat_path, data, kind)
    json_path.write_text(dump_json(ground_truth(kind, data, truth, mat_bytes)), encoding="ascii", newline="\n")
    return mat_path, json_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--kind", choices=sorted(PARAMS), action="append", help="only this kind (repeatable)")
    args = parser.parse_args(argv)
    for kind in args.kind or ("2way", "1way"):
        mat_path, json_path = write_dataset(kind, args.out)
        digest = json.loads(json_path.read_text())["sha256"]
        print(f"{mat_path} ({os.path.getsize(mat_path)} bytes, sha256 {digest[:16]}...)")
        print(f"{json_path} ({os.path.getsize(json_path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
