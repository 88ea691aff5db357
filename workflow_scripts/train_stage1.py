from kitscascade import config, runlog, stage1

runlog.start(snakemake.log[0])
stage1.train_fold(
    list(snakemake.input),
    config.with_execution(snakemake.params.cfg, snakemake.config, "stage1"),
    int(snakemake.wildcards.fold),
    snakemake.output.model,
    snakemake.output.curve,
    threads=snakemake.threads,
)
