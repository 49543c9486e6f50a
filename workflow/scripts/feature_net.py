from pipeline_lib.feature_net import train_feature_net
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    out = snakemake.output
    train_feature_net(snakemake.input.manifest, out.model, out.train_log, snakemake.params.cfg,
                      features_out=out.real_features, threads=snakemake.threads)
