# Stage 4: training runs, one per (dataset, backbone, method). A killed run resumes from
# its checkpoint.pt on the next invocation (kept out of the outputs so a failed job's
# cleanup never deletes it).


rule train:
    input:
        unpack(RULES.train_inputs),
        code=PLAN.code("workflow_scripts/train.py"),
    output:
        metrics=PLAN.run_file("{dataset}", "{backbone}", "{method}", "metrics.json"),
        model=PLAN.run_file("{dataset}", "{backbone}", "{method}", "model.pt"),
        history=PLAN.run_file("{dataset}", "{backbone}", "{method}", "epochs.jsonl"),
        snapshots=PLAN.run_file("{dataset}", "{backbone}", "{method}", "snapshots.pt"),
    params:
        model=PLAN.model_args(),
        root=RULES.dataset_root,
        out=RULES.output_folder,
        settings=RULES.train_settings,
        single_vector=RULES.single_vector_arg,
        init=RULES.init_arg,
        encoder=RULES.encoder_arg,
        progress="" if config["progress"] else "--no-progress",
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/train/{{dataset}}/{{backbone}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{dataset}}/{{backbone}}/{{method}}.tsv"
    wildcard_constraints:
        dataset="fashioniq|cirr",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/train.py --dataset {wildcards.dataset} --root {params.root} "
        "--features {input.npy} {params.encoder} --out {params.out} "
        "--train-json {params.settings:q} {params.single_vector} {params.init} "
        "--threads {threads} {params.model} "
        "{params.progress} > {log} 2>&1"
