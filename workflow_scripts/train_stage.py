from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
stage = snakemake.params.stage
steps.train_stage(
    stage,
    list(snakemake.input),
    snakemake.params.cfg,
    int(snakemake.wildcards.fold),
    snakemake.output.model,
    snakemake.output.curve,
    threads=snakemake.threads,
)
