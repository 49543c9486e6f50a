rule autoencoder:
    input:
        unpack(autoencoder_inputs),
        leakage=LEAKAGE,  # the leakage checks pass before any training
        manifest=rules.preprocess.output.manifest,
        code=code("autoencoder"),
    output:
        model=directory(f"{R}/autoencoder/{{ae}}/model"),
        train_log=f"{R}/autoencoder/{{ae}}/train_log.parquet",
    params:
        cfg=params_of(PLAN.autoencoder_params, "ae"),
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/autoencoder/{{ae}}.log",
    benchmark:
        f"{LOGS}/autoencoder/{{ae}}.benchmark.tsv"
    script:
        "../scripts/autoencoder.py"


rule autoencoder_metrics:
    input:
        unpack(perceptual_inputs),
        manifest=rules.preprocess.output.manifest,
        model=f"{R}/autoencoder/{{ae}}/model",
        code=code("autoencoder_metrics"),
    output:
        table=f"{R}/autoencoder/{{ae}}/recon_metrics.parquet",
        per_image=f"{R}/autoencoder/{{ae}}/recon_per_image.parquet",
    params:
        cfg=params_of(PLAN.autoencoder_metrics_params, "ae"),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/autoencoder/{{ae}}_metrics.log",
    benchmark:
        f"{LOGS}/autoencoder/{{ae}}_metrics.benchmark.tsv"
    script:
        "../scripts/autoencoder_metrics.py"
