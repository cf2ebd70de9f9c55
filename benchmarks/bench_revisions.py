"""The full native analysis of two revisions of clusterlmer, side by side in one run.

For a git revision (``--before``, e.g. the commit before a change) and the
working tree, on the bundled 2-way sample (338 rows x 139 timepoints,
``data ~ hit_miss * region + (1|sid) + (1|sid:ch)``, REML, Satterthwaite,
three F terms, cluster test, the default R cross-check of 3 timepoints):

(a) ``permutation_cluster_lmer(n_permutations=N, engine="native")`` with
    ``n_jobs=1`` and ``n_jobs=2``, each in a fresh process, the two
    revisions interleaved ``--repeats`` times (best and median wall time,
    CPU time of the parent);
(b) the time per permutation of the permutation task alone (the fits of
    the null, no cluster test) at 1 and at 139 timepoints: the time at one
    timepoint is the per-permutation set-up that does not depend on the
    number of timepoints, reported as its share of the time at 139;
(c) whether the two revisions agree: the observed fit's F, DF2 and p
    (largest relative difference; 0 means bit-identical) and the null
    distributions (largest relative difference over every permutation,
    sample and term, also restricted to F >= 1e-3, and the largest
    absolute difference), same seed.

The older revision is checked out into a temporary git worktree (removed at
the end); each child runs with that tree first on ``PYTHONPATH`` from a
neutral directory, so that its worker processes import the same tree.

Usage: python benchmarks/bench_revisions.py --before REV [--n-permutations 1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

_ANALYSIS = r"""
import json, sys, time, warnings
import numpy as np
import clusterlmer as cl
from clusterlmer import datasets
warnings.simplefilter("ignore")
n_perm, n_jobs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
data = datasets.sample_2way()
t0, c0 = time.perf_counter(), time.process_time()
res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=n_perm, seed=1, engine="native",
                                  progress=False, n_jobs=n_jobs)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
np.savez(out, **{"null " + t: res.null[t] for t in res.terms}, F=res.fit.F, df2=res.fit.df2, p=res.fit.p)
print(json.dumps({"wall": wall, "cpu": cpu, "clusters": len(res.clusters)}))
"""

_PER_PERMUTATION = r"""
import json, sys, time, warnings
import numpy as np
from clusterlmer import datasets
from clusterlmer.analysis import PermutationTask
from clusterlmer.design import build_design
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula
from clusterlmer.permute import make_permutations
warnings.simplefilter("ignore")
data = datasets.sample_2way()
model = parse_formula(datasets.FORMULA_2WAY)
design = build_design(data.design, model, response_column=data.response)
if "spec" in PermutationTask.__dataclass_fields__:
    from clusterlmer.spec import build_spec
    model_arg = build_spec(design)
else:  # revisions before the model specification take the design
    model_arg = design
perms = make_permutations(data.design, model, 500, seed=1)
out = {}
for n_times in (1, data.values.shape[1]):
    Y = np.ascontiguousarray(data.values[:, :n_times])
    task = PermutationTask(model_arg, Y, FitOptions(), "native", perms, ("hit_miss", "region", "hit_miss:region"),
                           "F", (n_times,))
    run = getattr(task, "statistics_of", None) or (lambda ks: np.stack([task.statistics(k) for k in ks]))
    run(range(0, 112))  # caches and first-call costs out of the timing
    best = np.inf
    for rep in range(3):  # 112 permutations: whole batches of 14 (139 timepoints) and of 16 (1 timepoint)
        ks = range(112 * (rep + 1), 112 * (rep + 2))
        t0 = time.process_time()
        run(ks)
        best = min(best, (time.process_time() - t0) / len(ks))
    out[str(n_times)] = best * 1e3
print(json.dumps(out))
"""


def _run(tree, code, *args):
    """Run ``code`` with ``tree`` first on the path, from a neutral directory; its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=cwd,
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed in {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel(a, b, floor=0.0):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b) & (np.abs(b) >= floor)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision to compare the working tree with")
    ap.add_argument("--n-permutations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per revision and n_jobs (default 2)")
    args = ap.parse_args(argv)

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                         text=True, check=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="clusterlmer-before-")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", work, rev], check=True,
                   capture_output=True)
    trees = {f"before ({rev})": pathlib.Path(work), "after (working tree)": ROOT}
    try:
        wall = {(name, j): [] for name in trees for j in (1, 2)}
        cpu = {key: [] for key in wall}
        nulls = {}
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.repeats):
                for j in (1, 2):
                    for name, tree in trees.items():
                        path = pathlib.Path(tmp) / f"{len(nulls)}.npz"
                        res = _run(tree, _ANALYSIS, args.n_permutations, j, path)
                        wall[(name, j)].append(res["wall"])
                        cpu[(name, j)].append(res["cpu"])
                        nulls.setdefault(name, np.load(path))
                        print(f"  run {rep + 1}, n_jobs={j}, {name}: {res['wall']:.1f} s wall", flush=True)
            per = {name: _run(tree, _PER_PERMUTATION) for name, tree in trees.items()}

            names = list(trees)
            print(f"\n== full analysis, bundled 2-way sample, 139 timepoints x {args.n_permutations} permutations, "
                  f"three F terms, cluster test, R cross-check of 3 timepoints ({os.cpu_count()} cores) ==")
            print(f"{'':24s} {'n_jobs':>6s} {'best s':>8s} {'median s':>9s} {'parent CPU s':>13s}")
            for j in (1, 2):
                for name in names:
                    w = wall[(name, j)]
                    print(f"{name:24s} {j:6d} {min(w):8.1f} {np.median(w):9.1f} {np.median(cpu[(name, j)]):13.1f}")
                print(f"{'ratio before / after':24s} {j:6d} {min(wall[(names[0], j)]) / min(wall[(names[1], j)]):8.2f}x")
            print("\n== time per permutation of the permutation task (CPU ms; null fits only) ==")
            for name in names:
                one, full = per[name]["1"], per[name]["139"]
                print(f"{name:24s} 1 timepoint {one:6.1f} ms, 139 timepoints {full:6.1f} ms: "
                      f"{one / full:.0%} of the time does not depend on the timepoints")
            a, b = nulls[names[0]], nulls[names[1]]
            print("\n== agreement, same seed (after vs before) ==")
            for key in ("F", "df2", "p"):
                print(f"observed {key:4s}: largest relative difference {_rel(b[key], a[key]):.1e}")
            terms = [k for k in a.files if k.startswith("null ")]
            rel_all = max(_rel(b[k], a[k]) for k in terms)
            rel_big = max(_rel(b[k], a[k], 1e-3) for k in terms)
            abs_all = max(float(np.nanmax(np.abs(b[k] - a[k]))) for k in terms)
            same_nan = all(np.array_equal(np.isnan(a[k]), np.isnan(b[k])) for k in terms)
            print(f"null: largest relative difference {rel_all:.1e} (F >= 1e-3: {rel_big:.1e}); largest absolute "
                  f"{abs_all:.1e}; the same NaNs: {same_nan}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", work], capture_output=True)


if __name__ == "__main__":
    main()
