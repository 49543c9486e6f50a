rule evaluate:
    input:
        manifest=rules.preprocess.output.manifest,
        feature_net=rules.feature_net.output.model,
        real_features=rules.feature_net.output.real_features,
        generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
        images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
        code=code("evaluate"),
    output:
        table=f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet",
        features=f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/features.parquet",
    params:
        cfg=params_of(PLAN.evaluate_params, "variant", "setting", "seed"),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/evaluate/{{variant}}/{{setting}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/evaluate/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
    script:
        "../scripts/evaluate.py"
