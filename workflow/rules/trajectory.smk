if "trajectory" in config:

    rule trajectory:
        input:
            unpack(perceptual_inputs),
            autoencoder=variant_autoencoder_model,
            model=f"{R}/diffusion/{{variant}}/model",
            classifier=FEATURE_NET,
            code=code("trajectory"),
        output:
            table=f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/trajectory.parquet",
            per_image=f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/per_image.parquet",
            figure=f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/traversal.png",
            latents=f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/latents.png",
        params:
            cfg=params_of(PLAN.trajectory_params, "variant", "setting", "seed"),
        threads: 1
        resources:
            gpu=1,
        conda:
            "../../envs/medaug.yaml"
        log:
            f"{LOGS}/trajectory/{{variant}}/{{setting}}/seed{{seed}}.log",
        benchmark:
            f"{LOGS}/trajectory/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
        script:
            "../scripts/trajectory.py"
