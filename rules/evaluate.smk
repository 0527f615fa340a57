# Stage 5: every run's final model on its own validation split, and zero-shot on CIRCO
# (CIRR models) and HP-FashionIQ (FashionIQ models), as in the paper.

rule evaluate:
    input:
        unpack(RULES.evaluate_inputs),
        code=PLAN.code("workflow_scripts/evaluate.py"),
    output:
        PLAN.evaluation("{benchmark}", "{backbone}", "{method}"),
    params:
        model=PLAN.model_args(),
        root=RULES.benchmark_root,
        run=RULES.model_run,
        image_root=RULES.image_root_arg,
        batch_size=config["evaluation"]["batch_size"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/evaluate/{{benchmark}}/{{backbone}}/{{method}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/evaluate.py --benchmark {wildcards.benchmark} "
        "--root {params.root} --run {params.run} --features {input.npy} --out {output} "
        "{params.image_root} --batch-size {params.batch_size} --threads {threads} "
        "{params.model} "
        "> {log} 2>&1"


# Stage 5b (evaluation.test_servers): the test-server files of each model evaluated on
# CIRR or CIRCO, scored on the hidden-target test split and validated before writing.

rule write_cirr_submission:
    input:
        unpack(RULES.cirr_submission_inputs),
        code=PLAN.code("workflow_scripts/write_submission.py"),
    output:
        report=PLAN.submission_report("cirr", "{backbone}", "{method}"),
        **PLAN.submission_server_files("cirr", "{backbone}", "{method}"),
    params:
        benchmark="cirr",
        root=PLAN.root("cirr"),
        run=RULES.model_run,
        out_dir=RULES.output_folder,
        batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/submissions/cirr/{{backbone}}/{{method}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/write_submission.py --benchmark {params.benchmark} "
        "--root {params.root} --run {params.run} --features {input.npy} "
        "--out-dir {params.out_dir} --name {wildcards.backbone}_{wildcards.method} "
        "--report {output.report} --batch-size {params.batch_size} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule write_circo_submission:
    input:
        unpack(RULES.circo_submission_inputs),
        code=PLAN.code("workflow_scripts/write_submission.py"),
    output:
        report=PLAN.submission_report("circo", "{backbone}", "{method}"),
        **PLAN.submission_server_files("circo", "{backbone}", "{method}"),
    params:
        benchmark="circo",
        root=PLAN.root("circo"),
        run=RULES.model_run,
        out_dir=RULES.output_folder,
        batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/submissions/circo/{{backbone}}/{{method}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/write_submission.py --benchmark {params.benchmark} "
        "--root {params.root} --run {params.run} --features {input.npy} "
        "--out-dir {params.out_dir} --name {wildcards.backbone}_{wildcards.method} "
        "--report {output.report} --batch-size {params.batch_size} --threads {threads} "
        "--device {params.device} > {log} 2>&1"
