if "cluster" in config:

    rule cluster:
        input:
            manifest=rules.preprocess.output.manifest,
            autoencoder=f"{R}/autoencoder/{cluster_params()['autoencoder']}/model",
            code=code("cluster"),
        output:
            indices=f"{R}/cluster/indices.parquet",
            selection=f"{R}/cluster/selection.parquet",
            assignments=f"{R}/cluster/assignments.parquet",
        params:
            cfg=cluster_params(),
        threads: 1
        resources:
            gpu=1,
        log:
            f"{LOGS}/cluster.log",
        benchmark:
            f"{LOGS}/cluster.benchmark.tsv"
        script:
            "../scripts/cluster.py"
