from pipeline_lib.harness import stage_log
from pipeline_lib.report import report

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    lists = ("recon", "classify", "evaluate", "cluster_quality", "trajectory", "interpolation", "memorization",
             "memorization_figures", "generated")
    inputs = {key: list(inp.get(key) or []) for key in lists}
    inputs |= {"manifest": inp.manifest, "real_features": next(iter(inp.real_features), None)}
    # the classifier statistics' tables, when there are classifiers
    inputs |= {key: [inp.get(key)] for key in ("intervals", "differences", "delong") if inp.get(key)}
    outputs = {key: (list(value) if key in ("grids", "pca", "memorization_figures") else value)
               for key, value in out.items()}
    report(inputs, outputs, snakemake.params.cfg)
