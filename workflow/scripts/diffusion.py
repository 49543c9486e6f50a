from pipeline_lib.diffusion import train_diffusion
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    clusters = {"assignments": inp.cluster_assignments, "selection": inp.cluster_selection,
                "models": inp.get("cluster_models")} if "cluster_assignments" in inp.keys() else None
    train_diffusion(inp.manifest, inp.autoencoder, out.model, out.train_log, snakemake.params.cfg,
                    feature_net=inp.get("feature_net"), clusters=clusters, threads=snakemake.threads)
