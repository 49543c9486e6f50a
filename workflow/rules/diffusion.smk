rule diffusion:
    input:
        unpack(diffusion_inputs),
        leakage=LEAKAGE,  # the leakage checks pass before any training
        manifest=rules.preprocess.output.manifest,
        autoencoder=variant_autoencoder_model,
        code=code("diffusion"),
    output:
        model=directory(f"{R}/diffusion/{{variant}}/model"),
        train_log=f"{R}/diffusion/{{variant}}/train_log.parquet",
    params:
        cfg=params_of(PLAN.diffusion_params, "variant"),
    threads: 2
    resources:
        gpu=config["diffusion"]["gpus"],
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/diffusion/{{variant}}.log",
    benchmark:
        f"{LOGS}/diffusion/{{variant}}.benchmark.tsv"
    script:
        "../scripts/diffusion.py"
