# Stage 6: hard-set analyses on one shared score matrix (the audit basis run's final
# model over the training queries): the false-negative audit (Fig. 9) and the
# hard-negative examples (Fig. 6).

STUDY = config["study"]


rule audit_hard_sets:
    input:
        unpack(RULES.analysis_inputs),
        code=PLAN.code("workflow_scripts/analyze_hard_sets.py"),
    output:
        PLAN.audit("{dataset}"),
    params:
        model=PLAN.model_args(),
        root=RULES.dataset_root,
        basis=RULES.model_run,
        methods=PLAN.audit_methods_json(),
        batch_size=config["evaluation"]["batch_size"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/analysis/audit_{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/analyze_hard_sets.py audit --dataset {wildcards.dataset} "
        "--root {params.root} --basis-run {params.basis} --features {input.npy} "
        "--methods {params.methods:q} --out {output} --batch-size {params.batch_size} "
        "--threads {threads} {params.model} > {log} 2>&1"


rule hard_negative_examples:
    input:
        unpack(RULES.analysis_inputs),
        code=PLAN.code("workflow_scripts/analyze_hard_sets.py"),
    output:
        PLAN.examples("{dataset}"),
    params:
        model=PLAN.model_args(),
        root=RULES.dataset_root,
        basis=RULES.model_run,
        strategy=config["methods"][STUDY["qure_method"]]["strategy"],
        strategy_params=json.dumps(config["methods"][STUDY["qure_method"]]["strategy_params"]),
        queries=STUDY["examples"]["queries"],
        negatives=STUDY["examples"]["negatives"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/analysis/examples_{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/analyze_hard_sets.py examples --dataset {wildcards.dataset} "
        "--root {params.root} --basis-run {params.basis} --features {input.npy} "
        "--strategy {params.strategy} --strategy-params {params.strategy_params:q} "
        "--queries {params.queries} --negatives {params.negatives} --out {output} "
        "--threads {threads} {params.model} > {log} 2>&1"
