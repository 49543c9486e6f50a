rule classify:
    input:
        leakage=LEAKAGE,  # the leakage checks pass before any training
        hashes=rules.leakage.output.hashes,
        manifest=rules.preprocess.output.manifest,
        generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
        images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
        code=code("classify"),
    output:
        table=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/scores.parquet",
        train_log=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/train_log.parquet",
        training_set=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/training_set.parquet",
    params:
        cfg=params_of(PLAN.classify_params, "variant", "setting", "seed", "arch", "point"),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}.log",
    benchmark:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}.benchmark.tsv"
    script:
        "../scripts/classify.py"
