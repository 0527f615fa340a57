# Stage 5: every run's final model on its own validation split, and zero-shot on CIRCO
# (CIRR models) and HP-FashionIQ (FashionIQ models), as in the paper.

rule evaluate:
    input:
        unpack(lambda w: PLAN.evaluate_inputs(w.benchmark, w.backbone, w.method)),
        code=PLAN.code("workflow_scripts/evaluate.py"),
    output:
        PLAN.evaluation("{benchmark}", "{backbone}", "{method}"),
    params:
        model=PLAN.model_args(),
        root=lambda w: PLAN.root(w.benchmark),
        run=lambda w, input: os.path.dirname(input.model),
        hp_image_root=lambda w: (
            f"--hp-image-root {config['data']['hp_image_root']}"
            if w.benchmark == "hp_fashioniq" and config["data"]["hp_image_root"]
            else ""
        ),
        batch_size=config["evaluation"]["batch_size"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/evaluate/{{benchmark}}/{{backbone}}/{{method}}.log",
    wildcard_constraints:
        benchmark="fashioniq|cirr|circo|hp_fashioniq",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/evaluate.py --benchmark {wildcards.benchmark} "
        "--root {params.root} --run {params.run} --features {input.npy} --out {output} "
        "{params.hp_image_root} --batch-size {params.batch_size} --threads {threads} "
        "{params.model} "
        "> {log} 2>&1"


# Stage 5b (evaluation.test_servers): the test-server files of each model evaluated on
# CIRR or CIRCO, scored on the hidden-target test split and validated before writing.

rule write_cirr_submission:
    input:
        unpack(lambda w: PLAN.evaluate_inputs("cirr", w.backbone, w.method)),
        code=PLAN.code("workflow_scripts/write_submission.py"),
    output:
        report=PLAN.submission_report("cirr", "{backbone}", "{method}"),
        **PLAN.submission_server_files("cirr", "{backbone}", "{method}"),
    params:
        benchmark="cirr",
        root=PLAN.root("cirr"),
        run=lambda w, input: os.path.dirname(input.model),
        out_dir=lambda w, output: os.path.dirname(output.report),
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
        unpack(lambda w: PLAN.evaluate_inputs("circo", w.backbone, w.method)),
        code=PLAN.code("workflow_scripts/write_submission.py"),
    output:
        report=PLAN.submission_report("circo", "{backbone}", "{method}"),
        **PLAN.submission_server_files("circo", "{backbone}", "{method}"),
    params:
        benchmark="circo",
        root=PLAN.root("circo"),
        run=lambda w, input: os.path.dirname(input.model),
        out_dir=lambda w, output: os.path.dirname(output.report),
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
