rule feature_net:
    input:
        leakage=LEAKAGE,  # the leakage checks pass before any training
        manifest=rules.preprocess.output.manifest,
        code=code("feature_net"),
    output:
        model=f"{R}/evaluate/feature_net/model.pt",
        train_log=f"{R}/evaluate/feature_net/train_log.parquet",
        real_features=f"{R}/evaluate/feature_net/real_features.parquet",
    params:
        cfg=feature_net_params(),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/evaluate/feature_net.log",
    benchmark:
        f"{LOGS}/evaluate/feature_net.benchmark.tsv"
    script:
        "../scripts/feature_net.py"


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
        cfg=evaluate_params,
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
