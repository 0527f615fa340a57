# Stage 7 (presentation): the paper's Tables 2-8, paper rows beside reproduced rows.
# Reads evaluation JSON files only.


rule table:
    input:
        RULES.table_inputs,
        code=PLAN.code("workflow_scripts/make_table.py"),
    output:
        csv=report(
            PLAN.table_file("{table}", "csv"),
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
        md=PLAN.table_file("{table}", "md"),
        tex=PLAN.table_file("{table}", "tex"),
    params:
        rows=RULES.table_rows,
        prefix=RULES.output_prefix,
    log:
        f"{LOGS}/tables/{{table}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_table.py --table {wildcards.table} "
        "--rows {params.rows:q} --out-prefix {params.prefix} > {log} 2>&1"
