if "memorization" in config:

    rule memorization:
        input:
            manifest=rules.preprocess.output.manifest,
            real_features=rules.feature_net.output.real_features,
            generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
            images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
            gen_features=rules.evaluate.output.features,
            code=code("memorization"),
        output:
            images=f"{R}/memorization/{{variant}}/{{setting}}/seed{{seed}}/images.parquet",
            summary=f"{R}/memorization/{{variant}}/{{setting}}/seed{{seed}}/summary.parquet",
            figure=f"{R}/memorization/{{variant}}/{{setting}}/seed{{seed}}/pairs.png",
        params:
            cfg=params_of(PLAN.memorization_params, "variant", "setting", "seed"),
        threads: 1
        conda:
            "../../envs/medaug.yaml"
        log:
            f"{LOGS}/memorization/{{variant}}/{{setting}}/seed{{seed}}.log",
        benchmark:
            f"{LOGS}/memorization/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
        script:
            "../scripts/memorization.py"
