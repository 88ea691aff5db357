from kitscascade import runlog, stage1

runlog.start(snakemake.log[0])
stage1.train_fold(
    list(snakemake.input),
    snakemake.params.cfg,
    int(snakemake.wildcards.fold),
    snakemake.output.model,
    snakemake.output.curve,
    threads=snakemake.threads,
)
