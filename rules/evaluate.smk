# Stage 5: every run's final model on its own validation split, and zero-shot on CIRCO
# (CIRR models) and HP-FashionIQ (FashionIQ models), as in the paper.

rule evaluate:
    input:
        unpack(lambda w: PLAN.evaluate_inputs(w.benchmark, w.backbone, w.method)),
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
