if "cluster" in config:

    rule cluster:
        input:
            leakage=LEAKAGE,  # the leakage checks pass before any training
            manifest=rules.preprocess.output.manifest,
            autoencoder=cluster_autoencoder_model(),
            code=code("cluster"),
        output:
            indices=CLUSTER["indices"],
            selection=CLUSTER["selection"],
            assignments=CLUSTER["assignments"],
            models=CLUSTER["models"],
        params:
            cfg=PLAN.cluster_params(),
        threads: 1
        resources:
            gpu=1,
        conda:
            "../../envs/medaug.yaml"
        log:
            f"{LOGS}/cluster.log",
        benchmark:
            f"{LOGS}/cluster.benchmark.tsv"
        script:
            "../scripts/cluster.py"

    rule cluster_quality:
        input:
            unpack(perceptual_inputs),
            manifest=rules.preprocess.output.manifest,
            generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
            images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
            assignments=CLUSTER["assignments"],
            models=CLUSTER["models"],
            model=f"{R}/diffusion/{{variant}}/model",  # a jointly trained model's own clusters
            autoencoder=cluster_autoencoder_model(),
            code=code("cluster_quality"),
        output:
            table=f"{R}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet",
            per_image=f"{R}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}/per_image.parquet",
        params:
            cfg=params_of(PLAN.cluster_quality_params, "variant", "setting", "seed"),
        threads: 1
        resources:
            gpu=1,
        conda:
            "../../envs/medaug.yaml"
        log:
            f"{LOGS}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}.log",
        benchmark:
            f"{LOGS}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
        script:
            "../scripts/cluster_quality.py"
