rule autoencoder:
    input:
        manifest=rules.preprocess.output.manifest,
        code=code("autoencoder"),
    output:
        model=directory(f"{R}/autoencoder/{AE}/model"),
        train_log=f"{R}/autoencoder/{AE}/train_log.parquet",
        recon=f"{R}/autoencoder/{AE}/recon_metrics.parquet",
    params:
        cfg=stage_params("autoencoder"),
    threads: 2
    resources:
        gpu=1,
    log:
        f"{LOGS}/autoencoder/{AE}.log",
    benchmark:
        f"{LOGS}/autoencoder/{AE}.benchmark.tsv"
    script:
        "../scripts/autoencoder.py"
