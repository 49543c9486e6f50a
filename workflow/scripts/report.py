from pipeline_lib.harness import stage_log
from pipeline_lib.report import report

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    inputs = {"recon": list(inp.recon), "classify": list(inp.classify), "evaluate": list(inp.evaluate),
              "cluster_quality": list(inp.cluster_quality), "trajectory": list(inp.trajectory),
              "interpolation": list(inp.interpolation),
              "manifest": inp.manifest,
              "real_features": next(iter(inp.real_features), None),
              "generated": list(inp.generated)}
    outputs = {key: (list(value) if key in ("grids", "pca") else value) for key, value in out.items()}
    report(inputs, outputs, snakemake.params.cfg)
