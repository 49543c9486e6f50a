from pipeline_lib.evaluate import evaluate_synthetic
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    # speed.feature_cache: the real images' features saved by the feature_net job (the same numbers); false
    # embeds the real images again in this job.
    cached = inp.real_features if snakemake.config["speed"]["feature_cache"] else None
    evaluate_synthetic(inp.manifest, inp.feature_net, inp.generated, out.table, snakemake.params.cfg,
                       features_out=out.features, real_features=cached, threads=snakemake.threads)
