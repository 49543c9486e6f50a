from pipeline_lib.evaluate import evaluate_synthetic
from pipeline_lib.io import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    evaluate_synthetic(inp.manifest, inp.feature_net, inp.generated, out.table, snakemake.params.cfg,
                       features_out=out.features, real_features=inp.real_features, threads=snakemake.threads)
