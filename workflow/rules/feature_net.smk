rule feature_net:
    input:
        leakage=LEAKAGE,  # the leakage checks pass before any training
        manifest=rules.preprocess.output.manifest,
        code=code("feature_net"),
    output:
        model=FEATURE_NET,
        train_log=f"{R}/feature_net/train_log.parquet",
        real_features=REAL_FEATURES,
    params:
        cfg=PLAN.feature_net_params(),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/feature_net.log",
    benchmark:
        f"{LOGS}/feature_net.benchmark.tsv"
    script:
        "../scripts/feature_net.py"
